"""Postgres from the Debian package, as a database cluster of its own in a project folder (never the system's):
initdb once, pg_ctl start on the port of ITFF_POSTGRES_URL, the platform's databases created, pg_ctl stop."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

# One database per service: Dagster's run, event-log and schedule storage; MLflow's tracking and registry; Optuna.
DATABASES = ("dagster", "mlflow", "optuna")
SYSTEM_USER = "postgres"  # Postgres refuses to run as root; the Debian package makes this user


def binary(name: str) -> str:
    """A Postgres server program: on PATH, else the newest in Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(Path(p).parts[-3]))
    if not versions:
        raise FileNotFoundError(f"{name} not found: install the Debian package postgresql (make cluster does)")
    return versions[-1]


def _as_server_user(command: list[str]) -> list[str]:
    """Root runs the server as the postgres user (initdb and postgres both refuse root)."""
    return ["runuser", "-u", SYSTEM_USER, "--", *command] if os.geteuid() == 0 else command


def _run(command: list[str]) -> None:
    done = subprocess.run(_as_server_user(command), capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:2])} failed: {(done.stderr or done.stdout).strip()}")


def init(data_dir: Path, url: str) -> None:
    """An empty database cluster in data_dir, owned by the URL's user, trusting connections from this machine."""
    if (data_dir / "PG_VERSION").is_file():
        return
    data_dir.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(data_dir, SYSTEM_USER, SYSTEM_USER)
    user = urlsplit(url).username or "itff"
    try:
        _run([binary("initdb"), "-D", str(data_dir), "-U", user, "-E", "UTF8", "--auth=trust", "--no-instructions"])
    except RuntimeError as error:
        if os.geteuid() == 0 and "Permission denied" in str(error):
            raise RuntimeError(
                f"{error} (as root, the server runs as {SYSTEM_USER}: every folder above "
                f"{data_dir} must be traversable by that user)"
            ) from None
        raise


# A throwaway server (the tests') skips what only protects data across a crash of the machine.
NOT_DURABLE = " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"


def start(data_dir: Path, url: str, durable: bool = True) -> None:
    """pg_ctl start on the URL's host and port (TCP only, no socket file), waiting until it accepts connections."""
    init(data_dir, url)
    parts = urlsplit(url)
    options = (
        f"-p {parts.port or 5432} -c listen_addresses={parts.hostname or '127.0.0.1'} -c unix_socket_directories=''"
    ) + ("" if durable else NOT_DURABLE)
    if not running(data_dir):
        _run([binary("pg_ctl"), "-D", str(data_dir), "-l", str(data_dir / "server.log"), "-o", options, "-w", "start"])
    create_databases(url)


def running(data_dir: Path) -> bool:
    status = subprocess.run(_as_server_user([binary("pg_ctl"), "-D", str(data_dir), "status"]), capture_output=True)
    return status.returncode == 0


def stop(data_dir: Path, mode: str = "fast") -> None:
    """pg_ctl stop; nothing to do when it is not running. fast: open sessions are closed and a checkpoint written;
    immediate (a throwaway server): no checkpoint, as after a crash."""
    if (data_dir / "PG_VERSION").is_file() and running(data_dir):
        _run([binary("pg_ctl"), "-D", str(data_dir), "-m", mode, "-w", "stop"])


def create_databases(url: str, names: tuple[str, ...] = DATABASES) -> None:
    """Each of `names` that does not exist yet, created through the server's maintenance database."""
    import psycopg

    admin = urlsplit(url)._replace(scheme="postgresql", path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as connection:
        existing = {row[0] for row in connection.execute("SELECT datname FROM pg_database")}
        for name in names:
            if name not in existing:
                connection.execute(f'CREATE DATABASE "{name}"')
