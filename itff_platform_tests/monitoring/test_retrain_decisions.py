"""Retrain decisions over time, on a real lake, a real MLflow registry and the replay: a stable period sends
no champion for retraining more than once in 30 days; a planted volatility shift triggers within its window.

The market is synthetic so that "stable" is known to be true: hourly returns that revert (a logistic model
learns the direction from the last returns) with a volatility that wanders, as crypto's does, around a fixed
level. Fixed drift thresholds call that wander drift every day; thresholds calibrated on the reference do not."""

from __future__ import annotations

import itertools
from datetime import date, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from scipy.signal import lfilter

import mlflow
from itff_platform.lake.layers import build_bronze, build_silver, ingest_raw
from itff_platform.market.files import FilesCandleSource
from itff_platform.monitoring.evaluation import evaluate, read_decisions, record_decisions
from itff_platform.monitoring.replay import KnownBy, replay, replay_settings
from itff_platform.settings import Settings
from itff_platform.training.dataset import training_data
from itff_platform.training.promotion import promote_champion
from itff_platform.training.train import train_symbol_target
from itff_platform_tests.conftest import utc

SYMBOL, START = "PROMOUSDT", utc(2023, 10, 1)
MONTHS = [utc(2023, month, 1) for month in range(10, 13)] + [utc(2024, month, 1) for month in range(1, 6)]
DAYS = 244  # through May 2024
CUTOFF = utc(2024, 4, 1)  # the champion learns what was known by then; the replay starts there
REPLAY_DAYS = 21
JUMP = utc(2024, 4, 21)  # the planted volatility shift
SEED = 2


def wandering_volatility_candles(
    days: int, seed: int = SEED, jump_at: datetime | None = None, jump: float = 1.0
) -> pl.DataFrame:
    """Hourly candles: AR(1) returns (phi -0.6, so the next return leans against the last), with a volatility
    whose log is a slow AR(1) (about 8 days of memory, sd 0.25) around 0.4 % an hour; from `jump_at` on the
    volatility is `jump` times larger."""
    n, rng = days * 24, np.random.default_rng(seed)
    stamps = pl.datetime_range(START, START + timedelta(hours=n - 1), timedelta(hours=1), eager=True, time_zone="UTC")
    memory = 0.995
    log_vol = lfilter([1.0], [1.0, -memory], rng.normal(size=n) * 0.25 * np.sqrt(1 - memory**2))
    sigma = 0.004 * np.exp(log_vol) * np.where((stamps >= jump_at).to_numpy() if jump_at else False, jump, 1.0)
    returns = lfilter([1.0], [1.0, 0.6], sigma * rng.normal(size=n))
    close = 100 * np.exp(np.cumsum(returns))
    open_ = np.r_[100.0, close[:-1]]
    return pl.DataFrame(
        {
            "timestamp": stamps,
            "open": open_,
            "close": close,
            "volume": rng.gamma(2.0, 10.0, n),
            "high": np.maximum(open_, close) * (1 + sigma * np.abs(rng.normal(size=n)) / 2),
            "low": np.minimum(open_, close) * (1 - sigma * np.abs(rng.normal(size=n)) / 2),
        }
    )


def build_lake(settings: Settings, candles: pl.DataFrame, known_by: datetime) -> None:
    settings.sources.files.drop_dir.mkdir(parents=True, exist_ok=True)
    candles.write_parquet(settings.sources.files.drop_dir / f"{SYMBOL}-1h.parquet")
    source = KnownBy(FilesCandleSource(settings.sources.files.drop_dir), known_by)
    for month in MONTHS:
        ingest_raw(source, settings, SYMBOL, [month])
        build_bronze(settings, SYMBOL, [month])
    build_silver(settings, SYMBOL, MONTHS)


@pytest.fixture(scope="module")
def stable(tmp_path_factory):
    """A champion trained on the stable market through CUTOFF, then REPLAY_DAYS replayed after it."""
    home = tmp_path_factory.mktemp("decisions")
    # label_horizon 1: the next bar's direction, which the reverting returns make learnable.
    settings = Settings(
        home=home,
        drop_dir=home / "drop",
        source="files",
        symbols=[SYMBOL],
        targets=["direction"],
        trials=1,
        wf_folds=3,
        label_horizon=1,
        start_date=START.date(),
        end_date=date(2024, 6, 1),
        drift_recent_days=7,
        drift_reference_days=60,
        drift_calibration_step_days=1,
        min_live_outcomes=24,
    )
    build_lake(settings, wandering_volatility_candles(DAYS), CUTOFF)
    mlflow.set_tracking_uri(settings.tracking_uri)
    train_symbol_target(
        settings,
        SYMBOL,
        "direction",
        families=["baseline_majority", "baseline_persistence", "logistic"],
        data=training_data(settings, SYMBOL, "direction", as_of=CUTOFF),
    )
    assert promote_champion(settings, SYMBOL, "direction").promoted
    lines = []
    summary = replay(
        settings,
        CUTOFF.date(),
        CUTOFF.date() + timedelta(days=REPLAY_DAYS - 1),
        progress=lines.append,
        report_every_days=REPLAY_DAYS,
    )
    return settings, summary, lines


def retrain_times(decisions: pl.DataFrame) -> dict[tuple[str, str], list[datetime]]:
    retrains = decisions.filter(pl.col("decision") == "retrain").sort("as_of")
    return {key: group["as_of"].to_list() for key, group in retrains.group_by("symbol", "target")}


def test_a_stable_period_sends_no_champion_for_retraining_twice_in_30_days(stable):
    settings, summary, _lines = stable
    decisions = read_decisions(replay_settings(settings))
    assert decisions.height == REPLAY_DAYS and summary.days == REPLAY_DAYS
    for model, times in retrain_times(decisions).items():
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        assert all(gap >= timedelta(days=30) for gap in gaps), f"{model} sent for retraining at {times}"
    # Calibrated, the wander of the volatility features is not drift: drift itself asks at most once in the
    # replay (the cooldown, not the thresholds, is what holds back anything else).
    drift_asks = decisions.filter(pl.col("reasons").str.contains("features drifted|regime mix shifted"))
    assert drift_asks.height <= 1
    # The drift frame reports the calibrated thresholds, above the fixed floors for the wandering features.
    drift = summary.last_evaluation.drift[SYMBOL]
    assert (drift["psi_threshold"] >= settings.monitoring.drift_psi_error).all() and (
        drift["calibration_windows"] > 40
    ).all()
    assert drift.filter(pl.col("feature") == "atr_pct")["psi_threshold"][0] > 2 * settings.monitoring.drift_psi_error


def test_a_planted_volatility_shift_triggers_retraining_within_its_window(stable):
    settings, _, _ = stable
    home = settings.home / "planted"
    planted = settings.model_copy(
        update={
            "lake_dir": home / "lake",
            "drop_dir": home / "drop",
            "monitoring_dir": home / "monitoring",
            "reports_dir": home / "reports",
        }
    )
    # The same market, the same champion; from JUMP on its volatility is five times what it was.
    build_lake(planted, wandering_volatility_candles(DAYS, jump_at=JUMP, jump=5.0), utc(2024, 6, 1))
    decided = []
    for day in range(settings.monitoring.drift_recent_days + 1):  # as of the jump, then each day of the window after it
        evaluation = evaluate(planted, JUMP + timedelta(days=day), with_plots=False)
        record_decisions(planted, evaluation.decisions)
        decided.append(evaluation.decisions.row(0, named=True))
    assert decided[0]["decision"] == "keep", "as of the jump, the recent window has not seen it yet"
    first = next(d for d in decided if d["decision"] == "retrain")
    assert first["as_of"] <= JUMP + timedelta(days=settings.monitoring.drift_recent_days)
    assert "features drifted past their calibrated error thresholds" in first["reasons"]
    # Once sent, the cooldown holds it for the rest of the window, and says until when.
    after = [d for d in decided if d["as_of"] > first["as_of"]]
    assert all(d["decision"] == "keep" and d["reasons"].startswith("cooldown") for d in after)
