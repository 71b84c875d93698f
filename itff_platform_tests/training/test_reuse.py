"""What a study's fingerprint (training.reuse) moves with: its rows, folds, family, trial budget, the settings that
can change its result and the code; and what it ignores, so an unrelated change does not retrain it."""

from pathlib import Path

import pytest

from itff_platform.features.silver import build_features
from itff_platform.market.synthetic import random_walk_candles
from itff_platform.settings import LEAVES, Settings
from itff_platform.training.dataset import training_data
from itff_platform.training.reuse import SETTINGS_IGNORED, data_digest, study_fingerprint
from itff_platform.training.train import folds_for


@pytest.fixture(scope="module")
def study():
    settings = Settings(wf_folds=3)
    silver = build_features(random_walk_candles(3000, seed=5), settings).collect()
    data = training_data(settings, "TESTUSDT", "direction", silver=silver)
    return settings, silver, data, folds_for(data, settings)


def fingerprint(settings: Settings, data, folds, family: str = "logistic") -> str:
    return study_fingerprint(data_digest(data), folds, family, settings)


def test_every_ignored_setting_is_a_setting():
    assert set(LEAVES) >= SETTINGS_IGNORED


def test_the_fingerprint_moves_with_what_changes_a_study_and_only_with_that(study):
    settings, silver, data, folds = study
    same = fingerprint(settings, data, folds)
    assert (
        fingerprint(Settings(wf_folds=3), training_data(settings, "TESTUSDT", "direction", silver=silver), folds)
        == same
    )
    # Settings a study does not read, and the budget of another kind of family, leave it alone.
    for unrelated in (
        {"torch_trials": 7},
        {"symbols": ["SOLUSDT"]},
        {"families": ["logistic"]},
        {"api_tokens": ["t"]},
        {"promotion_alpha": 0.01},
        {"rsi_period": 9},
        {"drift_psi_warn": 0.2},
        # Where the stores and workers run (the cluster profile) and the paper desk's gates read no training row.
        {"profile": "cluster"},
        {"postgres_url": "postgresql://itff@db:5432"},
        {"workers": 8},
        {"cluster_dir": Path("/elsewhere/.cluster")},
        {"confidence_threshold": 0.7},
        {"max_drawdown_pct": 5.0},
        {"per_symbol_usd_cap": 100.0},
        {"slippage_bps": 9.0},
        {"paper_cash": 1.0},
    ):
        assert fingerprint(settings.model_copy(update=unrelated), data, folds) == same, unrelated
    # What can change its result does not.
    for relevant in (
        {"trials": 4},
        {"fees_bps": 5.0},
        {"seed": 1},
        {"calibration_rows": 0},
        {"max_ece": 0.05},
        {"label_horizon": 6},
    ):
        assert fingerprint(settings.model_copy(update=relevant), data, folds) != same, relevant
    assert fingerprint(settings, data, folds, family="boosting") != same
    assert fingerprint(settings, data, folds[:-1]) != same
    moved = training_data(settings, "TESTUSDT", "direction", silver=silver.head(silver.height - 24))
    assert fingerprint(settings, moved, folds_for(moved, settings)) != same


def test_an_edit_of_a_shared_module_changes_the_lake_and_study_fingerprints(study):
    """The month arithmetic, names and tasks moved to itff_platform/rules.py (and bar lengths live in settings.py):
    an edit there changes what the lake and the studies compute, yet neither fingerprint read those files."""
    from itff_platform.fingerprints import PACKAGE_ROOT, code_digest
    from itff_platform.lake.incremental import lake_code

    settings, _, data, folds = study
    code_digest.cache_clear()
    before = lake_code(), fingerprint(settings, data, folds)
    rules = PACKAGE_ROOT / "rules.py"
    text = rules.read_text()
    try:
        rules.write_text(text + "\n# an edit\n")
        code_digest.cache_clear()
        after = lake_code(), fingerprint(settings, data, folds)
    finally:
        rules.write_text(text)
        code_digest.cache_clear()
    assert after[0] != before[0] and after[1] != before[1]
