"""Speed rewrites of the silver plan give the same bits as the formulations they replaced (kept here as references)."""

import hashlib
import json
import operator
from functools import reduce

import numpy as np
import polars as pl
import pytest

from itff_platform.features import indicators as ind
from itff_platform.features.silver import build_features
from itff_platform.market.synthetic import random_walk_candles
from itff_platform.settings import FeatureSettings, Settings
from itff_platform_tests.features import reference as ref

# Digests of the silver columns (frame_digest below) as the plan before the speed rewrites computed them (nested
# %B and z-score), per size of polars' thread pool:
# polars splits rolling sums across its threads, so their last bits depend on that size (not on the rewrites).
SILVER_DIGESTS: dict[int, dict[str, str]] = {
    1: {"hourly sample": "24fe78b5b36b4648", "synthetic 1m": "6a6d8683fa65b7e1"},
    2: {"hourly sample": "098ac5ee06ccdb57", "synthetic 1m": "8bd481e1e7030c74"},
    3: {"hourly sample": "ca15321f641ebab4", "synthetic 1m": "bf0f156ca16764e3"},
    4: {"hourly sample": "3722991a4c84cc15", "synthetic 1m": "a2a75fb4b9922849"},
    8: {"hourly sample": "dd050b7c41d13e1c", "synthetic 1m": "3d5da8303fc6e20c"},
}


def same_bits(actual: pl.Series, expected: pl.Series) -> bool:
    """Equal nulls and equal float bits (NaN included), not merely close."""
    if not actual.is_null().equals(expected.is_null()):
        return False
    return bool(
        np.array_equal(actual.fill_null(0.0).to_numpy().view("i8"), expected.fill_null(0.0).to_numpy().view("i8"))
    )


def wilder_by_running_count(column: str, period: int) -> pl.Expr:
    """Wilder's smoothing as first written (a running count of non-nulls places the seed), with today's seed sum."""
    values = pl.col(column)
    seen = values.is_not_null().cum_sum()
    non_null = values.drop_nulls()
    seed = reduce(operator.add, [non_null.get(k, null_on_oob=True) for k in range(period)]) / period
    seeded = pl.when(seen < period).then(None).when(seen == period).then(seed).otherwise(values)
    return seeded.ewm_mean(alpha=1.0 / period, adjust=False)


def test_wilder_seed_does_not_depend_on_how_the_column_is_chunked():
    """polars' mean sums chunk by chunk: the seed as drop_nulls().head(n).mean() changed in its last bit when the
    column came in two chunks (134 of 300 such series), and a column's chunks can vary from run to run."""
    rng = np.random.default_rng(5)
    for _ in range(50):
        one = pl.DataFrame({"x": [None] * 3 + (rng.normal(size=60) * rng.uniform(1, 100)).tolist()})
        split = 3 + int(rng.integers(1, 14))
        two = pl.concat([one.slice(0, split), one.slice(split)], rechunk=False)
        assert two.n_chunks() == 2
        smoothed = [frame.lazy().select(ind.wilder("x", 14)).collect().to_series() for frame in (one, two)]
        assert same_bits(*smoothed)


@pytest.mark.parametrize("leading_nulls", [0, 1, 13, 27])
@pytest.mark.parametrize("rows", [5, 14, 40, 3000])
def test_wilder_places_its_seed_as_the_running_count_did(leading_nulls, rows):
    values = np.random.default_rng(rows + leading_nulls).normal(size=rows)
    frame = pl.DataFrame(
        {"x": [None] * min(leading_nulls, rows) + values[leading_nulls:].tolist()}, schema={"x": pl.Float64}
    )
    # Inside with_columns beside other columns, as the silver plan runs it, and alone in a select.
    staged = frame.lazy().with_columns(
        ind.wilder("x", 14).alias("new"), wilder_by_running_count("x", 14).alias("old"), pl.col("x").abs().alias("y")
    )
    got = staged.collect()
    assert same_bits(got["new"], got["old"])
    alone = frame.select(ind.wilder("x", 14).alias("new"), wilder_by_running_count("x", 14).alias("old"))
    assert same_bits(alone["new"], alone["old"])


def silver_samples() -> list[tuple[str, pl.DataFrame, Settings]]:
    """The packaged hourly sample and a synthetic 1-minute series, each with its settings."""
    from itff_platform.market.sample import SampleCandleSource
    from itff_platform_tests.conftest import utc

    hourly = SampleCandleSource().fetch("BTCUSDT", "1h", utc(2023, 1, 1), utc(2023, 3, 1))
    minutes = random_walk_candles(4000, seed=3, step_s=60, start_price=30_000, volatility=0.0008, wick=0.0003)
    return [("hourly sample", hourly, Settings()), ("synthetic 1m", minutes, Settings(interval="1m"))]


def column_digests(frame: pl.DataFrame) -> dict[str, str]:
    """Each column's nulls and exact bits, hashed."""
    found = {}
    for name in frame.columns:
        column = frame[name]
        if column.dtype == pl.Float64:
            values = column.fill_null(0.0).to_numpy().view("i8").tobytes()
        else:
            values = "\x00".join(map(str, column.to_list())).encode()
        found[name] = hashlib.sha256(column.is_null().to_numpy().tobytes() + values).hexdigest()[:16]
    return found


# The Wilder series and what reads them: their seed is now summed in order (test above), which moved the seed of a
# few series by one last bit; every other column keeps the old plan's bits.
WILDER_DERIVED = ["atr", "atr_pct", "rsi", "plus_di", "minus_di", "adx", "trend_slope", "regime", "level_up"]


def frame_digest(frame: pl.DataFrame) -> str:
    return hashlib.sha256(json.dumps(column_digests(frame.drop(WILDER_DERIVED))).encode()).hexdigest()[:16]


def test_silver_columns_keep_the_bits_of_the_plan_before_its_speed_rewrites():
    """The staged Bollinger %B and z-score (and the rest of the plan around them) store the very bits the plan before
    them did. A deliberate change of a feature changes the digests: record them again for each pool
    size (POLARS_MAX_THREADS=n, print frame_digest of each sample)."""
    expected = SILVER_DIGESTS.get(pl.thread_pool_size())
    if expected is None:
        pytest.skip(f"no digests recorded for {pl.thread_pool_size()} polars threads")
    for name, candles, settings in silver_samples():
        assert frame_digest(build_features(candles, settings).collect()) == expected[name], name


def test_adx_smooths_its_own_true_range_when_its_period_differs_from_the_atr():
    candles = silver_samples()[0][1].head(600)
    settings = Settings(features=FeatureSettings(adx_period=10))
    features = build_features(candles, settings).collect()
    adx, plus_di, minus_di = ref.adx(
        candles["high"].to_list(), candles["low"].to_list(), candles["close"].to_list(), 10
    )
    for name, expected in (("adx", adx), ("plus_di", plus_di), ("minus_di", minus_di)):
        got = features[name].to_list()
        assert [g is None for g in got] == [e is None for e in expected], name
        assert all(g is None or abs(g - e) <= 1e-9 * max(1.0, abs(e)) for g, e in zip(got, expected)), name


@pytest.mark.parametrize("interval", ["1m", "1h", "1d"])
@pytest.mark.parametrize("rows", [5, 700, 30_000])
@pytest.mark.parametrize("volatility", [0.0008, 0.02])
def test_daily_range_summed_in_place_keeps_the_bits_of_the_shifted_sum(interval, rows, volatility):
    """The rebuild's whole-read daily range (windows: in_place, in-memory engine) equals the expression that
    build_features and the online path run, bit for bit and null for null, with a missing high in the middle.
    Volatile ranges too: on a calm series every order of addition is exact, so only those show a changed order
    (sum_horizontal's, which the expression used before, differed from left to right on 357 of 2,665 1h bars)."""
    from itff_platform.features.silver import with_daily_range

    candles = random_walk_candles(rows, seed=rows, step_s=60, start_price=30_000, volatility=volatility, wick=0.0003)
    candles = candles.with_columns(
        pl.when(pl.int_range(pl.len()) == rows // 2).then(None).otherwise(pl.col("high")).alias("high")
    )
    settings = Settings(interval=interval)
    shifted, in_place = (
        with_daily_range(candles, settings, in_place=flag).collect(engine="in-memory") for flag in (False, True)
    )
    assert shifted["_adr"].null_count() < rows or rows < 20 * settings.bars_per_day
    assert same_bits(in_place["_adr"], shifted["_adr"])
    assert in_place.equals(shifted)
