"""A crash loses no acknowledged prediction, and leaves no orphan holding the port: real `bentoml serve`
processes, real kill -9, a real Delta prediction log."""

import threading
import time

import httpx
import polars as pl
import pytest

from itff_platform.features.silver import feature_columns
from itff_platform.monitoring.prediction_log import prediction_log_path, write_ahead_path
from itff_platform_tests.conftest import free_port
from itff_platform_tests.faults.conftest import TOKEN, alive, kill9, serve, wait_for_workers

# Nothing reaches Delta by itself while the test runs: what is in the table afterwards came from the
# shutdown flush or from the write-ahead replay.
NO_FLUSH = {
    "ITFF_SERVE_WORKERS": "2",
    "ITFF_PREDICTION_LOG_FLUSH_S": "3600",
    "ITFF_PREDICTION_LOG_FLUSH_ROWS": "1000000",
}
FIGURES: dict = {}


def logged_ids(settings) -> set[str]:
    path = prediction_log_path(settings)
    return set(pl.read_delta(str(path))["request_id"].to_list()) if path.exists() else set()


def body_for(settings, silver) -> dict:
    return {"symbol": "PROMOUSDT", "features": list(silver.select(feature_columns(settings)).row(-1))}


def hammer(
    url: str, body: dict, acknowledged: list[str], stop: threading.Event, clients: int = 8
) -> list[threading.Thread]:
    def client():
        with httpx.Client(timeout=10, headers={"X-API-Token": TOKEN}) as session:
            while not stop.is_set():
                try:
                    answer = session.post(f"{url}/predict", json=body)
                except httpx.HTTPError:
                    continue  # the server is gone: nothing was acknowledged
                if answer.status_code == 200:
                    acknowledged.append(answer.json()["request_id"])

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    return threads


@pytest.mark.timeout(900)
def test_every_acknowledged_prediction_is_in_the_log_after_a_kill_9(lake):
    folder, settings, silver = lake
    port = free_port()
    process, url, log_file = serve(folder, port=port, **NO_FLUSH)
    workers = wait_for_workers(process.pid, 2)
    acknowledged: list[str] = []
    stop = threading.Event()
    threads = hammer(url, body_for(settings, silver), acknowledged, stop)
    deadline = time.time() + 120
    while len(acknowledged) < 400 and time.time() < deadline:
        time.sleep(0.05)
    kill9(*workers, process.pid)  # mid-traffic, every process at once: no shutdown hook runs
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    process.wait(timeout=30)
    log_file.close()
    answered = set(acknowledged)
    assert len(answered) >= 400
    before_restart = logged_ids(settings) & answered
    segments_left = list(write_ahead_path(settings).glob("*.jsonl"))

    process, url, log_file = serve(folder, port=port, **NO_FLUSH)  # the next start replays the dead writers' segments
    try:
        deadline = time.time() + 120
        while any(int(p.name.split("-")[0]) in workers for p in write_ahead_path(settings).glob("*.jsonl")):
            assert time.time() < deadline, "the dead workers' segments were not replayed"
            time.sleep(0.5)
        logged = logged_ids(settings)
        lost = answered - logged
        FIGURES.update(
            acknowledged=len(answered),
            logged=len(answered & logged),
            lost=len(lost),
            committed_before_restart=len(before_restart),
        )
        print(f"\nkill -9 mid-traffic: {FIGURES}")
        assert not lost, f"{len(lost)} of {len(answered)} acknowledged predictions are not in the log"
        assert len(before_restart) < len(answered) and segments_left  # the kill left them to the write-ahead segments
        log = pl.read_delta(str(prediction_log_path(settings))).filter(pl.col("request_id").is_in(list(answered)))
        assert log.height == len(answered)  # each once: the replay wrote no row twice
        assert "replayed" in (folder / "bentoml-serve.log").read_text()
    finally:
        process.terminate()
        process.wait(timeout=60)
        log_file.close()


@pytest.mark.timeout(900)
def test_a_killed_arbiters_workers_exit_so_the_next_serve_gets_the_port(lake):
    folder, settings, silver = lake
    port = free_port()
    process, url, log_file = serve(folder, port=port, ITFF_SERVE_WORKERS="2")
    workers = wait_for_workers(process.pid, 2)
    body = body_for(settings, silver)
    asked = [
        httpx.post(f"{url}/predict", json=body, headers={"X-API-Token": TOKEN}, timeout=30).json()["request_id"]
        for _ in range(10)
    ]
    kill9(process.pid)  # the arbiter only: nobody tells the workers
    process.wait(timeout=30)
    log_file.close()
    deadline = time.time() + 60
    while any(alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.2)
    orphans = [pid for pid in workers if alive(pid)]
    kill9(*orphans)  # never leave them behind, whatever the outcome
    assert not orphans, f"workers {orphans} outlived their arbiter"

    process, url, log_file = serve(folder, port=port, ITFF_SERVE_WORKERS="2")  # fails if the port is still held
    try:
        assert process.poll() is None
        assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
        deadline = time.time() + 60  # flushed by the workers as they stopped, or else replayed from their segments
        while any(int(p.name.split("-")[0]) in workers for p in write_ahead_path(settings).glob("*.jsonl")):
            assert time.time() < deadline, "the old workers' segments were neither committed nor replayed"
            time.sleep(0.5)
        assert set(asked) <= logged_ids(settings)
    finally:
        process.terminate()
        process.wait(timeout=60)
        log_file.close()
