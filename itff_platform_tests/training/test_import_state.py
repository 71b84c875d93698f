"""Importing the training modules leaves the process as it was: no environment variables, no logger levels."""

import os
import subprocess
import sys

# The libraries first: some set their own variables at import (polars' allocator, OpenMP), which is not ours.
PROBE = """
import logging, os
import mlflow, numpy, optuna, pandas, polars, scipy, sklearn, torch
before_env, before_level = dict(os.environ), logging.getLogger("mlflow").level
import itff_platform.training.study, itff_platform.training.reuse, itff_platform.training.promotion
import itff_platform.training.train
changed = {k: v for k, v in os.environ.items() if before_env.get(k) != v}
assert not changed, changed
assert logging.getLogger("mlflow").level == before_level, logging.getLogger("mlflow").level
"""


def test_importing_study_changes_no_process_wide_state():
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"}
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_study_still_quiets_mlflow_when_it_runs(monkeypatch):
    import logging

    from itff_platform.training.tracking import quiet_mlflow

    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    monkeypatch.setattr(logging.getLogger("mlflow"), "level", logging.NOTSET)
    quiet_mlflow()
    assert os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] == "false"
    assert logging.getLogger("mlflow").level == logging.WARNING
