"""Train every family (and the baselines) for one symbol and target, on the same walk-forward folds."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from itff_platform.models.registry import names
from itff_platform.settings import Settings
from itff_platform.training.dataset import TrainingData, training_data
from itff_platform.training.reuse import data_digest, earlier_outcome, study_fingerprint
from itff_platform.training.splits import Fold, walk_forward_splits
from itff_platform.training.study import StudyOutcome, run_study

log = logging.getLogger(__name__)


def folds_for(data: TrainingData, settings: Settings) -> list[Fold]:
    return walk_forward_splits(
        n_rows=len(data),
        n_folds=settings.training.wf_folds,
        test_rows=int(len(data) * settings.training.wf_test_fraction),
        horizon=settings.features.label_horizon,
        embargo=settings.training.wf_embargo_bars,
        mode=settings.training.wf_mode,
        train_rows=settings.training.wf_train_bars,
    )


def families_for(target: str, settings: Settings) -> list[str]:
    """The task's baselines, then the families the settings choose for it."""
    if target == "forward_return":
        return [*names("regression", baseline=True), *settings.training.regression_families]
    return [*names("classification", baseline=True), *settings.training.families]


def train_symbol_target(
    settings: Settings,
    symbol: str,
    target: str,
    families: list[str] | None = None,
    progress: Callable[[str], None] = log.info,
    as_of: datetime | None = None,
    data: TrainingData | None = None,
    parallel_runs: int = 1,
) -> list[StudyOutcome]:
    """Every family's study, or its earlier outcome when nothing it depends on changed. `parallel_runs`: training
    runs that may run beside this one and share the cores (training.threads)."""
    data = data or training_data(settings, symbol, target, as_of)
    folds = folds_for(data, settings)
    progress(
        f"[{symbol} {target}] {len(data)} rows, {len(folds)} folds of {len(folds[0].test)} test rows, "
        f"silver Delta version {data.table_versions.get('silver')}"
    )
    rows = data_digest(data)
    outcomes = []
    for family in families or families_for(target, settings):
        fingerprint = study_fingerprint(rows, folds, family, settings)
        earlier = earlier_outcome(settings, data, family, fingerprint)
        if earlier is not None:
            progress(
                f"[{symbol} {target} {family}] unchanged since run {earlier.run_id} (same data, settings and code): reused"
            )
        outcomes.append(
            earlier
            or run_study(data, family, folds, settings, progress, fingerprint=fingerprint, parallel_runs=parallel_runs)
        )
    return outcomes
