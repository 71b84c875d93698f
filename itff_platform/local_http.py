"""Local HTTP servers started as child processes (the replay's service, the benchmarks' servers, the tests'):
a free loopback port, and waiting until the server answers. Each caller decides how a server that never
answers fails (an exception, a pytest failure, an exit), so this only says whether it answered."""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Collection


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it; another process could still take it before use)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def answers(
    url: str,
    process: subprocess.Popen,
    timeout_s: float,
    statuses: Collection[int] = (200,),
    interval_s: float = 0.5,
) -> bool:
    """Polls GET `url` until it answers one of `statuses` (True), or the process exits or `timeout_s` passes
    first (False): a server that died is not waited on for the rest of the timeout."""
    import httpx  # a client is only needed here, not by every importer of the module

    deadline = time.monotonic() + timeout_s
    while process.poll() is None and time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code in statuses:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(interval_s)
    return False
