"""Is each server of the cluster profile listening? One line naming the setting and host:port when not."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from itff_platform.settings import Settings


class Unreachable(ConnectionError):
    """A server of the cluster profile does not answer: its message names the setting and the host."""


def host_and_port(url: str, default_port: int) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or default_port


def check_listening(setting: str, url: str, default_port: int, timeout: float = 2.0) -> None:
    host, port = host_and_port(url, default_port)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise Unreachable(
            f"{setting}: nothing answers at {host}:{port} ({reason}): start the cluster (make cluster) "
            f"or point {setting} at a running server"
        ) from None


def preflight(settings: Settings, mlflow: bool = False) -> None:
    """Postgres and Redis (and the MLflow server when `mlflow`) accept connections, or Unreachable says which."""
    check_listening("ITFF_POSTGRES_URL", settings.cluster.postgres_url, 5432)
    check_listening("ITFF_REDIS_URL", settings.cluster.redis_url, 6379)
    if mlflow:
        check_listening("ITFF_MLFLOW_SERVER_URL", settings.cluster.mlflow_server_url, 80)
