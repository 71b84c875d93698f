"""A study's trials spread over two processes joined through its RDB storage (training.worker), on SQLite and,
where the Postgres binaries are installed, on a throwaway Postgres server: trials from both processes, the budget
exactly, and a worker killed mid-trial whose trial is failed by its heartbeat and run again."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

from itff_platform.cluster import postgres
from itff_platform.features.silver import build_features
from itff_platform.market.synthetic import random_walk_candles
from itff_platform.settings import Settings
from itff_platform.training.dataset import training_data
from itff_platform.training.objective import PREDICTIONS_ARTIFACT, TRIAL_RUN, WORKER_PID
from itff_platform.training.study import run_study
from itff_platform.training.train import folds_for
from itff_platform_tests.conftest import free_port
from mlflow import MlflowClient

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # retry_history
BUDGET = 6
DONE = (TrialState.COMPLETE, TrialState.PRUNED)


def _throwaway_postgres() -> Iterator[str]:
    """A Postgres server of its own (itff_platform.cluster, as make cluster starts one), stopped after the module.
    Its folder is outside pytest's root-only temp folder: as root the server runs as the postgres user."""
    folder = Path(tempfile.mkdtemp(prefix="itff-optuna-pg-"))
    os.chmod(folder, 0o755)
    url = f"postgresql://itff@127.0.0.1:{free_port()}"
    postgres.start(folder / "pg", url, durable=False)
    try:
        yield Settings(postgres_url=url).postgres_database("optuna", driver="psycopg")
    finally:
        postgres.stop(folder / "pg", mode="immediate")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def storage_url(request, tmp_path_factory) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('optuna') / 'optuna.db'}"
    else:
        yield from _throwaway_postgres()


def _state(storage: optuna.storages.RDBStorage, trial_id: int) -> TrialState | None:
    try:
        return storage.get_trial(trial_id).state
    # SQLite: stopped in the middle of a commit, its lock held. Optuna raises it as a StorageInternalError (from the
    # OperationalError) when its session ends: uncaught, the killer thread died and left the worker stopped with the
    # lock, and the study in this process failed with "database is locked" (a CI run under load).
    except (sqlalchemy.exc.OperationalError, optuna.exceptions.StorageInternalError):
        return None


def _kill_the_worker_mid_trial(storage: optuna.storages.RDBStorage, killed: list, stop: threading.Event) -> None:
    """SIGKILL the other process in its second trial (so it has one complete): its trial is left RUNNING. The
    process is stopped first and its trial read again, so it is surely killed mid-trial, not just after it."""
    while not stop.is_set():
        for study in storage.get_all_studies():
            trials = storage.get_all_trials(study._study_id, deepcopy=False)
            theirs = [t for t in trials if t.user_attrs.get(WORKER_PID) not in (None, os.getpid())]
            running = [t for t in theirs if t.state == TrialState.RUNNING]
            if running and any(t.state == TrialState.COMPLETE for t in theirs):
                pid = running[0].user_attrs[WORKER_PID]
                os.kill(pid, signal.SIGSTOP)
                still_running = False
                try:
                    still_running = _state(storage, running[0]._trial_id) == TrialState.RUNNING
                finally:  # never left stopped (holding SQLite's lock) by a failed read
                    if not still_running:
                        os.kill(pid, signal.SIGCONT)  # it finished that trial meanwhile, or is unreadable: try again
                if still_running:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(running[0])
                    return
        time.sleep(0.02)


@pytest.fixture(scope="module")
def shared_study(storage_url, tmp_path_factory):
    """One logistic study of BUDGET trials over 2 processes (this one and a worker), the worker killed mid-trial."""
    settings = Settings(
        home=tmp_path_factory.mktemp("workers"),
        trials=BUDGET,
        study_workers=2,
        study_heartbeat_s=1,
        wf_folds=3,
        pruner="none",
        optuna_storage=storage_url,
        max_ece=1e-9,  # registration refused: the refit and the logged model are not what is tested here
    )
    silver = build_features(random_walk_candles(3000, seed=3), settings).collect()
    data = training_data(settings, "TESTUSDT", "direction", silver=silver)
    storage = optuna.storages.RDBStorage(storage_url)  # the tables exist before the study and the killer race
    killed: list[optuna.trial.FrozenTrial] = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_the_worker_mid_trial, args=(storage, killed, stop), daemon=True)
    killer.start()
    try:
        outcome = run_study(data, "logistic", folds_for(data, settings), settings, lambda _: None)
    finally:
        stop.set()
        killer.join()
    (name,) = optuna.get_all_study_names(storage)
    return settings, outcome, optuna.load_study(study_name=name, storage=storage), killed


def test_one_study_gets_trials_from_two_processes_with_unique_numbers(shared_study):
    _, _, study, _ = shared_study
    done = [t for t in study.trials if t.state in DONE]
    assert len({t.user_attrs[WORKER_PID] for t in done}) == 2
    numbers = [t.number for t in study.trials]
    assert len(numbers) == len(set(numbers))


def test_the_processes_together_run_exactly_the_budget(shared_study):
    _, outcome, study, _ = shared_study
    assert len(study.get_trials(states=DONE)) == BUDGET
    assert outcome.trials_completed + outcome.trials_pruned == BUDGET


def test_the_study_run_takes_the_best_trial_from_the_storage(shared_study):
    settings, outcome, study, _ = shared_study
    assert outcome.params == study.best_params
    run = MlflowClient(settings.tracking_uri).get_run(outcome.run_id)
    assert run.data.tags["optuna_study"] == study.study_name
    assert run.data.metrics["best_search_loss"] == pytest.approx(study.best_value)


def test_every_completed_trial_logs_its_predictions_whichever_process_ran_it(shared_study):
    # A worker's pruner reads a leader's rows from them: the study's own process logs its trials' too.
    settings, _, study, _ = shared_study
    client = MlflowClient(settings.tracking_uri)
    completed = study.get_trials(states=(TrialState.COMPLETE,))
    assert {t.user_attrs[WORKER_PID] for t in completed} >= {os.getpid()}
    for trial in completed:
        logged = [artifact.path for artifact in client.list_artifacts(trial.user_attrs[TRIAL_RUN])]
        assert PREDICTIONS_ARTIFACT in logged, trial.number


def test_a_killed_workers_trial_is_failed_and_retried(shared_study):
    settings, _, study, killed = shared_study
    assert killed, "the worker never ran a second trial"
    lost = study.trials[killed[0].number]
    assert lost.state == TrialState.FAIL
    (retry,) = [t for t in study.trials if optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(t)]
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(retry) == [lost.number]
    assert retry.state in DONE and retry.params == lost.params
    assert retry.user_attrs[WORKER_PID] == os.getpid()  # the only process left
    # Its MLflow run does not stay RUNNING forever.
    assert MlflowClient(settings.tracking_uri).get_run(lost.user_attrs[TRIAL_RUN]).info.status == "KILLED"
