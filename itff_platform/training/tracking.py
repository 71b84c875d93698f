"""MLflow's process-wide chatter, turned down by the training and promotion steps when they start, not at import:
importing a module must not change the process it is imported into."""

from __future__ import annotations

import logging
import os


def quiet_mlflow() -> None:
    """MLflow prints a progress bar per artifact download and INFO lines per model; a study's own log line is
    enough. An explicit MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR in the environment wins."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.getLogger("mlflow").setLevel(logging.WARNING)
