"""Waiting on a local server: it answers, or its process died (no waiting out the timeout), or it answers wrong."""

import subprocess
import sys
import time

from itff_platform.local_http import answers, free_port


def test_a_server_that_answers_is_ready_and_a_dead_one_is_not_waited_on(tmp_path):
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert answers(f"http://127.0.0.1:{port}/", server, timeout_s=30, interval_s=0.1)
        # Up, but not with the status asked for: the timeout decides.
        assert not answers(f"http://127.0.0.1:{port}/missing", server, timeout_s=0.5, interval_s=0.1)
    finally:
        server.kill()
        server.wait()

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    started = time.monotonic()
    assert not answers(f"http://127.0.0.1:{free_port()}/", dead, timeout_s=60)
    assert time.monotonic() - started < 5
