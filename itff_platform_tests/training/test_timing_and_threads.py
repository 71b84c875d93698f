"""Where a study's time goes (training.timing), and how many threads its trials use (training.threads)."""

import time

import pytest
import torch
from dagster import DagsterInstance
from threadpoolctl import threadpool_info

from itff_platform.defs.training_assets import parallel_runs
from itff_platform.reporting import time_by_family
from itff_platform.settings import Settings
from itff_platform.training.threads import available_cores, pool_limits, study_threads, threads_per_trial
from itff_platform.training.timing import PhaseClock, phases_of


def test_a_phase_inside_another_is_charged_to_itself_only():
    clock = PhaseClock()
    with clock.phase("registration"):
        time.sleep(0.01)
        with clock.phase("refit"):
            time.sleep(0.2)
    assert clock.seconds["refit"] >= 0.2
    assert 0.01 <= clock.seconds["registration"] < 0.2  # counted with the refit, it would be 0.21 or more
    metrics = clock.metrics()
    assert metrics["study_seconds"] >= metrics["refit_seconds"] + metrics["registration_seconds"]
    assert phases_of(metrics) == {"refit": clock.seconds["refit"], "registration": clock.seconds["registration"]}


def test_time_outside_every_phase_goes_to_the_default_phase():
    clock = PhaseClock(default="setup")
    time.sleep(0.01)  # opening the experiment and the parent run, before any phase
    with clock.phase("search"):
        pass
    metrics = clock.metrics()
    assert metrics["setup_seconds"] >= 0.01 and set(clock.cpu_seconds) == {"setup", "search"}
    assert metrics["study_seconds"] == pytest.approx(metrics["setup_seconds"] + metrics["search_seconds"], abs=0.05)


def test_trials_share_the_cores_among_what_runs_at_once():
    cores = available_cores()
    assert threads_per_trial(Settings()) == cores
    assert threads_per_trial(Settings(study_jobs=2)) == max(1, cores // 2)
    assert threads_per_trial(Settings(study_workers=2)) == max(1, cores // 2)  # worker processes: the same
    assert threads_per_trial(Settings(study_workers=2, study_jobs=2)) == max(1, cores // 4)
    assert threads_per_trial(Settings(), parallel_runs=cores * 4) == 1
    assert threads_per_trial(Settings(torch_threads=3, study_jobs=2)) == 3


def test_the_thread_limit_holds_inside_the_study_only():
    before = torch.get_num_threads()
    with study_threads(1, uses_torch=True):
        assert torch.get_num_threads() == 1
        assert all(pool["num_threads"] == 1 for pool in threadpool_info())
    assert torch.get_num_threads() == before


def test_blas_gets_one_thread_and_openmp_and_torch_the_trials_share():
    # OpenBLAS's threads spin for each other: with a core taken by another process a product ran 80x slower.
    assert pool_limits(2) == {"openmp": 2, "blas": 1}
    with study_threads(2, uses_torch=True):
        assert torch.get_num_threads() == 2
        pools = threadpool_info()
        assert all(pool["num_threads"] == 1 for pool in pools if pool["user_api"] == "blas")
        assert all(pool["num_threads"] == 2 for pool in pools if pool["user_api"] == "openmp")


def test_an_instance_without_a_run_queue_runs_one_training_run_at_a_time():
    assert parallel_runs(DagsterInstance.ephemeral()) == 1


def test_the_cli_prints_study_time_by_family_slowest_first():
    rows = [
        {"family": "logistic", "study_s": 10.0, "phase_s": {"search": 6.0, "refit": 2.0}},
        {"family": "transformer", "study_s": 40.0, "phase_s": {"search": 30.0}},
        {"family": "logistic", "study_s": 12.0, "phase_s": {"search": 8.0, "refit": 2.5}},
    ]
    lines = time_by_family(rows).splitlines()
    assert "62 s in all" in lines[0]
    assert lines[1].split()[:3] == ["transformer", "40.0", "s"]
    assert lines[2].split()[:3] == ["logistic", "22.0", "s"] and "search 14.0, refit 4.5" in lines[2]


def test_importing_the_platform_makes_openmp_sleep_unless_told_otherwise():
    """An `itff` or `dagster dev` started outside make gets the passive wait policy too; an explicit one wins."""
    import os
    import subprocess
    import sys

    read = [sys.executable, "-c", "import itff_platform, os; print(os.environ['OMP_WAIT_POLICY'])"]
    bare = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert subprocess.run(read, env=bare, capture_output=True, text=True, check=True).stdout.strip() == "PASSIVE"
    told = {**bare, "OMP_WAIT_POLICY": "ACTIVE"}
    assert subprocess.run(read, env=told, capture_output=True, text=True, check=True).stdout.strip() == "ACTIVE"


def test_a_trial_in_a_thread_of_its_own_fits_on_its_share_of_openmp_threads(monkeypatch):
    """libgomp's limit is per thread: Optuna's study_jobs threads started with every core, whatever the study's
    limit (study_threads) said, until the objective set it in the trial's own thread."""
    import contextlib
    import threading
    import types

    import numpy as np
    import optuna
    from sklearn.utils._openmp_helpers import _openmp_effective_n_threads

    from itff_platform.models.registry import spec
    from itff_platform.training import objective
    from itff_platform.training.dataset import TrainingData
    from itff_platform.training.splits import Fold

    if available_cores() < 2:
        pytest.skip("one core: every thread sees one OpenMP thread")
    seen = []

    def fit_folds(make, data, folds, weighting, on_fold):
        seen.append(_openmp_effective_n_threads())
        return np.zeros(2), [0.5], np.zeros(2)

    run = types.SimpleNamespace(info=types.SimpleNamespace(run_id="run"))
    tracking = types.SimpleNamespace(
        start_run=lambda **_: contextlib.nullcontext(run), log_params=lambda _: None, log_metric=lambda *_, **__: None
    )
    monkeypatch.setattr(objective, "out_of_sample", fit_folds)
    monkeypatch.setattr(objective, "mlflow", tracking)
    data = TrainingData("X", "direction", ["f"], np.zeros((4, 1)), np.array([0, 1, 0, 1]), *[np.zeros(4)] * 4, {})
    folds = [Fold(0, np.arange(2), np.arange(2, 4))]
    trials = objective.Trials(data, spec("logistic"), folds, Settings(), 1, "experiment", "parent", threads=1)
    trial = optuna.create_study(pruner=optuna.pruners.NopPruner()).ask()
    fresh = threading.Thread(target=objective.make_objective(trials, lambda _: None, lambda *_: None), args=(trial,))
    fresh.start()
    fresh.join()
    assert seen == [1]
