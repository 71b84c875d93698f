"""A study's trials spread over several processes, on one machine or many, that join one Optuna study through
its RDB storage (SQLite on one machine, Postgres in the cluster profile).

The study's own process (training.study) creates the study, logs what it trains on (rows, folds, settings) as
an artifact of the study's MLflow run, starts `study_workers - 1` local worker processes and runs trials itself;
`itff study-worker STUDY` (or `python -m itff_platform.training.worker STUDY`) joins from any machine that reaches
the storage and the MLflow server. Every process runs trials until the study holds its budget of completed or
pruned trials; the study's process then reads the best trial from the storage and goes on (holdout, refit,
registration) alone.

A worker that dies stops its trial's heartbeat: after `GRACE_HEARTBEATS` silent heartbeats another process marks
the trial FAIL and Optuna's RetryHeartbeatStaleTrialCallback (RetryFailedTrialCallback before Optuna 4.9) queues it
again with the same parameters, which the next free process runs."""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.trial import TrialState

import mlflow
from itff_platform.models.registry import spec
from itff_platform.settings import Settings, redact_uri
from itff_platform.training.dataset import TrainingData
from itff_platform.training.objective import (
    TRIAL_RUN,
    Predictions,
    Search,
    Trials,
    log_predictions,
    make_objective,
    open_study,
)
from itff_platform.training.splits import Fold
from itff_platform.training.threads import study_threads, threads_per_trial
from itff_platform.training.tracking import quiet_mlflow

log = logging.getLogger(__name__)
DONE = (TrialState.COMPLETE, TrialState.PRUNED)  # what counts towards the budget
GRACE_HEARTBEATS = 3  # silent heartbeats before a running trial is taken for dead
MAX_RETRY = 2  # times a dead worker's trial is run again
JOIN_TIMEOUT_S = 120.0  # how long the local workers wait for each other before starting anyway
POLL_S = 0.1
INPUTS = "study_inputs"  # the artifact folder of the study's run holding what its workers train on
READY = "local_workers"  # study user attr, set last: the study is published, and how many local processes join
WORKER_ATTR = "worker."  # study user attrs worker.<host>.<pid>: the processes that joined


class SurplusTrial(Exception):
    """A trial asked for after the budget was already taken by the trials before it (two workers asking at once)."""


def rdb_storage(url: str, heartbeat_s: int) -> optuna.storages.RDBStorage:
    """The study's storage with heartbeats, a dead worker's trial failed after the grace period and retried."""
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}  # writers queue, not fail
    with warnings.catch_warnings():  # heartbeat_interval is "experimental" in every Optuna since 2.9
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine,
            heartbeat_interval=heartbeat_s,
            grace_period=GRACE_HEARTBEATS * heartbeat_s,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
        )


def _counts(study: optuna.Study) -> tuple[int, int, bool]:
    """Trials done (completed or pruned), running, and whether one waits (a retry) to be run."""
    states = [t.state for t in study.get_trials(deepcopy=False)]
    return sum(s in DONE for s in states), states.count(TrialState.RUNNING), TrialState.WAITING in states


def _no_room(study: optuna.Study, budget: int) -> bool:
    done, running, waiting = _counts(study)
    return done >= budget or (done + running >= budget and not waiting)


def _within_budget(objective: Callable[[optuna.Trial], float], budget: int) -> Callable[[optuna.Trial], float]:
    """Two processes that look for room at the same moment may both start a trial; trial numbers are handed out
    one at a time, so the later one sees the earlier and stands down (FAIL, tagged `surplus`, never retried)."""

    def run(trial: optuna.Trial) -> float:
        before = trial.study.get_trials(deepcopy=False)
        if sum(t.number < trial.number and t.state != TrialState.FAIL for t in before) >= budget:
            trial.set_user_attr("surplus", True)
            raise SurplusTrial(f"trial {trial.number}: the budget of {budget} trials is taken")
        return objective(trial)

    return run


def work(study: optuna.Study, objective: Callable[[optuna.Trial], float], budget: int, timeout_s: float) -> None:
    """Run trials until the study holds `budget` completed or pruned ones, whoever ran them. With no room for a
    new trial, wait for the running ones: one whose worker died is failed by its heartbeat and queued again."""

    # MaxTrialsCallback alone lets N processes overshoot by N-1 (each finishes the trial it started); the room
    # check stops a process from starting a trial that the running ones would make one too many.
    def stop_without_room(s: optuna.Study, _trial: optuna.trial.FrozenTrial) -> None:
        if _no_room(s, budget):
            s.stop()

    stop: list[Callable[[optuna.Study, optuna.trial.FrozenTrial], None]] = [
        optuna.study.MaxTrialsCallback(budget, states=DONE),
        stop_without_room,
    ]
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        done, running, waiting = _counts(study)
        if done >= budget:
            return
        if waiting or done + running < budget:
            study.optimize(_within_budget(objective, budget), timeout=left, callbacks=stop, catch=(SurplusTrial,))
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            time.sleep(POLL_S)


def join(study: optuna.Study, expected: int, given_up: Callable[[], bool] = lambda: False) -> None:
    """Record this process in the study and wait (a while) for the `expected` local ones, so that they start
    together instead of the first one up running the whole budget while the others import."""
    study.set_user_attr(f"{WORKER_ATTR}{socket.gethostname()}.{os.getpid()}", time.time())
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while time.monotonic() < deadline and not given_up():
        if sum(key.startswith(WORKER_ATTR) for key in study.user_attrs) >= expected:
            return
        time.sleep(POLL_S)


def save_inputs(folder: Path, data: TrainingData, folds: list[Fold], settings: Settings, family: str) -> None:
    """What a worker trains on, without pickles: the arrays, the folds, and the study's settings as JSON."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "x": data.x,
        "y": data.y,
        "timestamps": data.timestamps,
        "regimes": data.regimes.astype(str),
        "forward_return": data.forward_return,
        "close": data.close,
    }
    for fold in folds:
        arrays |= {f"train_{fold.number}": fold.train, f"test_{fold.number}": fold.test}
    np.savez(folder / "data.npz", **arrays)  # type: ignore[arg-type]
    (folder / "settings.json").write_text(settings.model_dump_json())
    meta = {
        "family": family,
        "symbol": data.symbol,
        "target": data.target,
        "features": data.features,
        "table_versions": data.table_versions,
        "folds": [fold.number for fold in folds],
    }
    (folder / "study.json").write_text(json.dumps(meta))


def load_inputs(folder: Path) -> tuple[TrainingData, list[Fold], Settings, str]:
    meta = json.loads((folder / "study.json").read_text())
    settings = Settings.model_validate_json((folder / "settings.json").read_text())  # not this machine's env
    with np.load(folder / "data.npz") as saved:
        data = TrainingData(
            symbol=meta["symbol"],
            target=meta["target"],
            features=meta["features"],
            x=saved["x"],
            y=saved["y"],
            timestamps=saved["timestamps"],
            regimes=saved["regimes"],
            forward_return=saved["forward_return"],
            close=saved["close"],
            table_versions=meta["table_versions"],
        )
        folds = [Fold(n, saved[f"train_{n}"], saved[f"test_{n}"]) for n in meta["folds"]]
    return data, folds, settings, meta["family"]


@dataclass
class Workers:
    """The local worker processes of one study, and the storage they share with this process."""

    study_name: str
    storage: optuna.storages.RDBStorage
    processes: list[subprocess.Popen[bytes]]

    def gone(self) -> bool:
        return any(process.poll() is not None for process in self.processes)


@contextmanager
def local_workers(
    settings: Settings, study_name: str, n_trials: int, threads: int, progress: Callable[[str], None]
) -> Iterator[Workers | None]:
    """`study_workers - 1` processes that will join the study `study_name` once it exists; None when the study
    runs in this process alone (study_workers 1, or a baseline's single trial). Started before the study's setup,
    so that their imports (seconds) overlap it. On leaving, they are waited for (or stopped, on an error)."""
    if settings.training.study_workers < 2 or n_trials < 2:
        yield None
        return
    url = settings.study_storage
    storage = rdb_storage(url, settings.training.study_heartbeat_s)  # its tables exist before a worker opens it
    # The URL rides in the environment, not the command line, where `ps` would show its password.
    env = {**os.environ, "ITFF_OPTUNA_STORAGE": url}
    command = [sys.executable, "-m", __name__, study_name, "--threads", str(threads)]
    processes = [subprocess.Popen(command, env=env) for _ in range(settings.training.study_workers - 1)]
    try:
        yield Workers(study_name, storage, processes)
    except BaseException:
        for process in processes:
            process.kill()
        raise
    finally:
        _wait_for(processes, progress)


def search_with_workers(workers: Workers, trials: Trials, progress: Callable[[str], None]) -> Search:
    """The search of training.study, shared by this process and its `workers` (and any that join from elsewhere):
    the study and what it trains on are published, then this process runs trials like any worker."""
    settings, local = trials.settings, len(workers.processes) + 1
    study = open_study(workers.study_name, workers.storage, settings, settings.training.seed)
    with tempfile.TemporaryDirectory() as scratch:
        save_inputs(Path(scratch), trials.data, trials.search_folds, settings, trials.family_spec.name)
        mlflow.log_artifacts(scratch, artifact_path=INPUTS)
    mlflow.set_tag("optuna_study", workers.study_name)  # what `itff study-worker` joins
    attrs = {
        "parent_run_id": trials.parent_run_id,
        "experiment_id": trials.experiment,
        "tracking_uri": settings.tracking_uri,
        "heartbeat_s": settings.training.study_heartbeat_s,
        "trials": trials.n_trials,
        READY: local,  # last: a worker waits for it
    }
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    progress(f"study {workers.study_name}: {local} local processes")
    search = Search(study)

    def keep(number: int, predictions: Predictions) -> None:
        search.predictions[number] = predictions  # read back here without a download if it is the best
        log_predictions(predictions)  # where a worker's pruner reads a leader this process ran

    objective = make_objective(trials, progress, keep)
    join(study, local, given_up=workers.gone)
    work(study, objective, trials.n_trials, settings.training.study_timeout_s)
    _wait_for(workers.processes, progress)  # they leave once the budget is complete
    _end_lost_runs(study)
    return search


def _end_lost_runs(study: optuna.Study) -> None:
    """A dead worker's trial run stays RUNNING in MLflow: ended as KILLED, as its trial is FAIL in the study."""
    client = mlflow.MlflowClient()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        run_id = trial.user_attrs.get(TRIAL_RUN)
        if run_id and client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, "KILLED")


def _wait_for(processes: Sequence[subprocess.Popen[bytes]], progress: Callable[[str], None]) -> None:
    """Workers leave once the budget is complete; one that does not within 30 s is stopped."""
    for process in processes:
        if process.returncode is not None:
            continue
        try:
            code = process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.terminate()
            code = process.wait(timeout=30)
        if code:
            progress(f"study worker {process.pid} ended with {code}")


def _published(study_name: str, storage: str) -> dict[str, Any]:
    """The study's attributes once its process has published it (a local worker starts before it does)."""
    plain = optuna.storages.RDBStorage(storage)
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            attrs = optuna.load_study(study_name=study_name, storage=plain).user_attrs
        except KeyError:
            attrs = {}
        if READY in attrs:
            return attrs
        time.sleep(POLL_S)
    where = redact_uri(storage)
    raise SystemExit(f"itff study-worker: no study {study_name!r} ready in {where} after {JOIN_TIMEOUT_S:.0f} s")


def run_worker(study_name: str, storage: str, threads: int | None = None) -> int:
    """Join the study `study_name` in `storage` and run its trials until its budget is complete."""
    quiet_mlflow()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    attrs = _published(study_name, storage)
    mlflow.set_tracking_uri(attrs["tracking_uri"])
    with tempfile.TemporaryDirectory() as scratch:
        folder = mlflow.artifacts.download_artifacts(
            run_id=attrs["parent_run_id"], artifact_path=INPUTS, dst_path=scratch
        )
        data, folds, settings, family = load_inputs(Path(folder))
    family_spec = spec(family)
    # Not the study's seed: two workers with one seed would sample the same parameters in lockstep.
    seed = settings.training.seed + os.getpid()
    study = open_study(study_name, rdb_storage(storage, attrs["heartbeat_s"]), settings, seed, new=False)
    threads = threads or threads_per_trial(settings)
    experiment, parent = attrs["experiment_id"], attrs["parent_run_id"]
    trials = Trials(data, family_spec, folds, settings, attrs["trials"], experiment, parent, threads)
    objective = make_objective(trials, log.info, lambda _number, predictions: log_predictions(predictions))
    with study_threads(threads, family_spec.torch):
        join(study, attrs[READY])
        work(study, objective, attrs["trials"], settings.training.study_timeout_s)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m itff_platform.training.worker STUDY`: the same as `itff study-worker STUDY` (cli.py)."""
    parser = argparse.ArgumentParser(prog="itff study-worker")
    parser.add_argument("study")
    parser.add_argument("--storage")
    parser.add_argument("--threads", type=int)
    return run_args(parser.parse_args(argv))


def run_args(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s study-worker %(process)d %(message)s")
    return run_worker(args.study, args.storage or Settings().study_storage, args.threads)


if __name__ == "__main__":
    sys.exit(main())
