"""A worker exits when the process that started it dies.

BentoML's arbiter starts the workers and passes them its listening socket. If the arbiter is killed with
SIGKILL it cannot stop them, and the orphans keep the port: the next `make serve` fails with "Address already
in use". So each worker asks the kernel for SIGTERM when its parent dies (Linux PR_SET_PDEATHSIG), which runs
the normal graceful shutdown (the prediction log is flushed), and a watchdog thread checks the parent every
`interval_s` as a second line (other platforms, or a parent that died before the request was made). A worker
that has not finished its graceful shutdown `grace_s` after that exits hard."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1


def exit_with_parent(interval_s: float = 0.5, grace_s: float = 15.0) -> int:
    """Arm both mechanisms for the calling process; returns the parent pid being watched."""
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
                log.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d); relying on the watchdog", ctypes.get_errno())
        except (OSError, AttributeError):
            log.warning("prctl is unavailable; relying on the watchdog")
    threading.Thread(target=_watch, args=(parent, interval_s, grace_s), name="parent-watchdog", daemon=True).start()
    return parent


def _watch(parent: int, interval_s: float, grace_s: float) -> None:
    while os.getppid() == parent:
        time.sleep(interval_s)
    log.warning(
        "the service's arbiter (pid %d) is gone: this worker (pid %d) stops, so it does not hold the port",
        parent,
        os.getpid(),
    )
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace_s)
    os._exit(1)
