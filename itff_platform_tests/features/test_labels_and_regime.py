import math

import polars as pl

from itff_platform.features.labels import label_columns
from itff_platform.features.silver import build_features
from itff_platform.rules import REGIMES
from itff_platform.settings import Settings
from itff_platform_tests.conftest import utc


def bars(closes, highs=None, lows=None, atr=1.0, drop_rows=()):
    n = len(closes)
    frame = pl.DataFrame(
        {
            "timestamp": pl.datetime_range(utc(2024, 1, 1), utc(2024, 1, 1, n - 1), "1h", eager=True, time_unit="us"),
            "close": [float(c) for c in closes],
            "high": [float(h) for h in (highs or closes)],
            "low": [float(lo) for lo in (lows or closes)],
            "atr": [atr] * n,
        }
    )
    return frame.with_row_index("i").filter(~pl.col("i").is_in(list(drop_rows))).drop("i")


def labels(frame, **overrides):
    settings = Settings(label_horizon=2, label_neutral_zone=0.001, label_barrier_atr=1.0, **overrides)
    return frame.with_columns(label_columns(settings))


def test_direction_is_the_sign_of_the_forward_log_return_with_a_neutral_zone():
    out = labels(bars([100, 101, 103, 100.9, 100]))
    assert out["forward_return"][0] == math.log(103 / 100)
    assert out["direction"].to_list() == [1, 0, 0, None, None]  # the last h bars have no future yet
    assert out["direction_neutral"].to_list() == [False, True, False, None, None]  # |ln(100.9/101)| < 0.001


def test_level_up_is_set_when_the_upper_barrier_is_touched_first():
    closes = [100, 100, 100, 100, 100, 100]
    highs = [100, 101.5, 100, 100, 101.2, 100]  # upper barrier at 101 touched on bar 1 and on bar 4
    lows = [100, 100, 98.5, 100, 98.8, 100]  # lower barrier at 99 touched on bar 2 and on bar 4
    out = labels(bars(closes, highs, lows))
    # bar 0: up on bar 1 first -> 1; bar 1: down on bar 2 first -> 0; bar 2: both on bar 4 (same bar) -> 0;
    # bar 3: both on bar 4 -> 0 (ambiguous counts as not set); last two: no complete horizon.
    assert out["level_up"].to_list() == [1, 0, 0, 0, None, None]


def test_labels_spanning_a_gap_in_the_data_are_left_undefined():
    out = labels(bars([100, 101, 102, 103, 104, 105], drop_rows=[3]))
    # Rows are hours 0, 1, 2, 4, 5: two rows ahead of hours 1 and 2 is three hours, not two.
    assert out["timestamp"].dt.hour().to_list() == [0, 1, 2, 4, 5]
    assert out["direction"].to_list() == [1, None, None, None, None]


def test_regime_follows_its_rules_on_the_real_sample(btc_hourly):
    settings = Settings()
    silver = build_features(btc_hourly.filter(pl.col("volume") > 0), settings).collect()
    assert set(silver["regime"].unique()) == set(REGIMES)
    warm = silver.filter(pl.col("regime") != "unknown")
    first_known = silver.with_row_index().filter(pl.col("regime") != "unknown")["index"][0]
    assert first_known == settings.features.regime_volatility_lookback + settings.features.volatility_window - 1
    trending = warm.filter(pl.col("regime").str.starts_with("trending"))
    assert (trending["adx"] >= settings.features.regime_adx_trend).all()
    assert (warm.filter(pl.col("regime") == "trending_up")["trend_slope"] > 0).all()
    assert (warm.filter(pl.col("regime") == "trending_down")["trend_slope"] < 0).all()
    assert (warm.filter(pl.col("regime") == "range_bound")["adx"] < settings.features.regime_adx_range).all()
    shares = warm["regime"].value_counts(normalize=True)
    volatile_share = shares.filter(pl.col("regime") == "volatile")["proportion"][0]
    assert 0.05 < volatile_share < 0.2  # a trailing 90th percentile flags roughly a tenth of bars


def test_regime_thresholds_come_from_the_settings(btc_hourly):
    strict = build_features(btc_hourly.head(3000), Settings(regime_adx_trend=60, regime_adx_range=5)).collect()
    loose = build_features(btc_hourly.head(3000), Settings()).collect()
    assert (strict["regime"].str.starts_with("trending")).sum() < (loose["regime"].str.starts_with("trending")).sum()
