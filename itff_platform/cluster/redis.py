"""Redis from the Debian package (redis-server): the distributed executor's broker, on the port of ITFF_REDIS_URL,
its pid, log and snapshot in a folder of ours."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from itff_platform.cluster.preflight import host_and_port


def start(state_dir: Path, url: str, wait_s: float = 10.0) -> None:
    server = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(server).exists():
        raise FileNotFoundError("redis-server not found: install the Debian package redis-server (make cluster does)")
    if running(state_dir):
        return
    state_dir.mkdir(parents=True, exist_ok=True)
    host, port = host_and_port(url, 6379)
    subprocess.run(
        [
            server,
            "--port",
            str(port),
            "--bind",
            host,
            "--dir",
            str(state_dir),
            "--daemonize",
            "yes",
            "--pidfile",
            str(state_dir / "redis.pid"),
            "--logfile",
            str(state_dir / "redis.log"),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        check=True,
    )
    deadline = time.monotonic() + wait_s
    while not _pid(state_dir):
        if time.monotonic() > deadline:
            raise RuntimeError(f"redis-server did not start: see {state_dir / 'redis.log'}")
        time.sleep(0.05)


def _pid(state_dir: Path) -> int | None:
    try:
        return int((state_dir / "redis.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def running(state_dir: Path) -> bool:
    pid = _pid(state_dir)
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop(state_dir: Path, wait_s: float = 10.0) -> None:
    """SIGTERM to the server our pid file names, then wait for it to go (it removes the pid file)."""
    pid = _pid(state_dir)
    if pid is None or not running(state_dir):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait_s
    while running(state_dir) and time.monotonic() < deadline:
        time.sleep(0.05)
