"""The lake for two symbols and a one-trial training through the cluster profile: `itff` against a real Postgres,
Redis, MLflow server and two celery workers, each symbol's training a run of its own at the same time. Its stores
hold what an embedded run of the same settings makes: the same rows per lake layer, the same registered versions."""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import polars as pl
import psycopg
import pytest

import mlflow
from itff_platform.settings import Settings
from itff_platform_tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SYMBOLS = ["BTCUSDT", "ETHUSDT"]
# Six months: the regime's month of warm-up, then two walk-forward folds; one logistic trial on one target.
SMALL = {
    "ITFF_SYMBOLS": json.dumps(SYMBOLS),
    "ITFF_START_DATE": "2023-09-01",
    "ITFF_END_DATE": "2024-03-01",
    "ITFF_TARGETS": '["direction"]',
    "ITFF_FAMILIES": '["logistic"]',
    "ITFF_TRIALS": "1",
    "ITFF_WF_FOLDS": "2",
    "ITFF_MAX_ECE": "1",  # register whatever one trial gives
    "ITFF_PROGRESS_BAR": "false",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
}
EMBEDDED = "import sys; from itff_platform.cli import main; sys.exit(main(['run', '--lake-only']) or main(['train']))"
LAYERS = {"raw": "raw/candles", "bronze": "bronze/candles", "silver": "silver/features"}


def environment(home: Path, **extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ITFF_", "DAGSTER_", "MLFLOW_"))}
    return {**base, "PYTHONPATH": str(ROOT), "ITFF_HOME": str(home), **SMALL, **extra}


# Every process the module starts, each in a session of its own: at the end each whole group is killed. `mlflow
# server` runs uvicorn as a child and passes on only SIGTERM/SIGINT, so killing the parent alone left the child
# listening and holding Postgres connections after the tests.
SPAWNED: list[subprocess.Popen] = []


def spawn(command: list[str], env: dict[str, str], **output) -> subprocess.Popen:
    process = subprocess.Popen(command, cwd=ROOT, env=env, start_new_session=True, **output)
    SPAWNED.append(process)
    return process


def kill_spawned() -> None:
    for process in SPAWNED:
        with contextlib.suppress(ProcessLookupError):  # throwaway servers: none needs a clean shutdown
            os.killpg(process.pid, signal.SIGKILL)
    for process in SPAWNED:
        process.wait()
    SPAWNED.clear()


def itff(*args: str, env: dict[str, str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "itff_platform.cli", *args]
    return spawn(command, env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finished(process: subprocess.Popen, timeout: float = 240) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]
    return output


def wait_listening(port: int, process: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, log.read_text()[-3000:]
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise AssertionError(f"nothing listens on {port}: {log.read_text()[-3000:]}")


def lake_rows(home: Path) -> dict[str, int]:
    lake = home / "data_lake"
    return {name: pl.scan_delta(str(lake / path)).select(pl.len()).collect().item() for name, path in LAYERS.items()}


def registered_versions(tracking_uri: str) -> Counter:
    client = mlflow.MlflowClient(tracking_uri)
    return Counter(version.name for version in client.search_model_versions(max_results=1000))


def step_starts(dagster_db: str) -> list[tuple[str, str]]:
    with psycopg.connect(dagster_db) as db:
        return db.execute("SELECT run_id, step_key FROM event_logs WHERE dagster_event_type = 'STEP_START'").fetchall()


def kill_a_step(dagster_db: str, worker: subprocess.Popen, timeout: float = 120) -> None:
    """SIGKILL the pool process of one worker while it executes a training step, as an OOM kill would: once both
    trainings' steps have started (one on each worker: each holds one task at a time). Early in the step, before it
    registers anything, so the stores still match the embedded run's once the step ran again."""
    before = len(step_starts(dagster_db))
    deadline = time.monotonic() + timeout
    while len(step_starts(dagster_db)) < before + len(SYMBOLS):
        assert time.monotonic() < deadline, "the training steps did not start"
        time.sleep(0.2)
    children = Path(f"/proc/{worker.pid}/task/{worker.pid}/children").read_text().split()
    assert len(children) == 1, children  # -c 1: one pool process, executing its step
    os.kill(int(children[0]), signal.SIGKILL)


@pytest.fixture(scope="module")
def both(servers, tmp_path_factory):
    """The same small lake and training, once embedded and once on the cluster (at the same time)."""
    embedded_home, cluster_home = tmp_path_factory.mktemp("embedded"), tmp_path_factory.mktemp("cluster")
    settings = Settings(profile="cluster", postgres_url=servers["postgres"])
    mlflow_port = free_port()
    dagster_home = cluster_home / "dagster"
    dagster_home.mkdir()
    shutil.copy(ROOT / "deploy" / "native" / "dagster.yaml", dagster_home / "dagster.yaml")
    cluster = environment(
        cluster_home,
        ITFF_PROFILE="cluster",
        ITFF_POSTGRES_URL=servers["postgres"],
        ITFF_REDIS_URL=servers["redis"],
        ITFF_MLFLOW_SERVER_URL=f"http://127.0.0.1:{mlflow_port}",
        DAGSTER_HOME=str(dagster_home),
        DAGSTER_POSTGRES_URL=settings.postgres_database("dagster", driver="psycopg2"),
    )
    logs = cluster_home / "logs"
    logs.mkdir()

    def start(name: str, command: list[str]) -> subprocess.Popen:
        with (logs / f"{name}.log").open("w") as log:
            return spawn(command, cluster, stdout=log, stderr=subprocess.STDOUT)

    try:
        server = start(
            "mlflow",
            [
                str(BIN / "mlflow"),
                "server",
                "--backend-store-uri",
                settings.postgres_database("mlflow", driver="psycopg2"),
                "--artifacts-destination",
                str(cluster_home / "mlflow-artifacts"),
                "--serve-artifacts",
                "--host",
                "127.0.0.1",
                "--port",
                str(mlflow_port),
                "--workers",
                "1",
            ],
        )
        workers = [
            start(
                f"worker{n}",
                [
                    str(BIN / "celery"),
                    "-A",
                    "itff_platform.defs.celery_worker",
                    "worker",
                    "-Q",
                    "dagster",
                    "-c",
                    "1",
                    "-n",
                    f"itff-w{n}@%h",
                    "--without-gossip",
                    "--without-mingle",
                    "--loglevel",
                    "WARNING",
                ],
            )
            for n in (1, 2)
        ]
        embedded = environment(embedded_home, DAGSTER_HOME=str(embedded_home))
        # Embedded: the lake, then the training, in one process (one start-up of dagster fewer).
        embedded_run = spawn(
            [sys.executable, "-c", EMBEDDED], embedded, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        wait_listening(mlflow_port, server, logs / "mlflow.log")
        finished(itff("run", "--lake-only", env=cluster))
        # Each symbol's training is a run of its own, both at once: one step on each worker.
        trainings = [itff("train", "--symbol", symbol, env=cluster) for symbol in SYMBOLS]
        kill_a_step(settings.postgres_database("dagster"), workers[0])
        finished(embedded_run)
        for training in trainings:
            finished(training)
        yield {"embedded": embedded_home, "cluster": cluster_home, "settings": settings, "mlflow_port": mlflow_port}
    finally:
        kill_spawned()


def test_dagster_runs_and_events_are_in_postgres_and_steps_ran_on_both_workers(both):
    with psycopg.connect(both["settings"].postgres_database("dagster")) as db:
        statuses = Counter(dict(db.execute("SELECT status, count(*) FROM runs GROUP BY status").fetchall()))
        events = db.execute("SELECT count(*) FROM event_logs").fetchone()[0]
        engine_events = [
            row[0] for row in db.execute("SELECT event FROM event_logs WHERE dagster_event_type = 'ENGINE_EVENT'")
        ]
    assert statuses == {"SUCCESS": 3}, statuses  # the lake, and one training run per symbol
    assert events > 0
    workers = {name for name in ("itff-w1@", "itff-w2@") if any(name in event for event in engine_events)}
    assert workers == {"itff-w1@", "itff-w2@"}, "each worker should have executed a step"


def test_mlflow_runs_and_versions_are_in_postgres_and_match_embedded(both):
    with psycopg.connect(both["settings"].postgres_database("mlflow")) as db:
        runs = db.execute("SELECT count(*) FROM runs").fetchone()[0]
        in_postgres = Counter(dict(db.execute("SELECT name, count(*) FROM model_versions GROUP BY name").fetchall()))
    through_server = registered_versions(f"http://127.0.0.1:{both['mlflow_port']}")
    embedded = registered_versions(Settings(home=both["embedded"]).tracking_uri)
    assert runs > 0
    assert set(embedded) == {f"itff-{symbol}-direction" for symbol in SYMBOLS}, embedded
    assert in_postgres == through_server == embedded
    with psycopg.connect(both["settings"].postgres_database("optuna")) as db:
        assert db.execute("SELECT count(*) FROM trials").fetchone()[0] > 0  # the studies are in Postgres too


def test_rows_per_layer_match_embedded(both):
    cluster, embedded = lake_rows(both["cluster"]), lake_rows(both["embedded"])
    assert cluster == embedded and min(cluster.values()) > 0, (cluster, embedded)


def test_a_step_whose_worker_died_ran_again_and_its_run_succeeded(both):
    """kill_a_step killed one worker's pool process mid-step: celery requeued the step (acks_late, a lost worker's
    task rejected back to the queue), so it started twice, and its run still succeeded."""
    dagster_db = both["settings"].postgres_database("dagster")
    started = Counter(step_starts(dagster_db))
    again = [run_and_step for run_and_step, times in started.items() if times > 1]
    assert len(again) == 1 and started[again[0]] == 2, started
    with psycopg.connect(dagster_db) as db:
        status = db.execute("SELECT status FROM runs WHERE run_id = %s", (again[0][0],)).fetchone()[0]
    assert status == "SUCCESS"
