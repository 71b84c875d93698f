import polars as pl

from itff_platform.lake.cleaning import continuity_breaks
from itff_platform.lake.delta import with_month
from itff_platform_tests.conftest import random_walk_candles, utc


def keyed(candles: pl.DataFrame, symbol: str = "ETHUSDT") -> pl.DataFrame:
    return with_month(candles).with_columns(pl.lit("1h").alias("interval"), pl.lit(symbol).alias("symbol"))


def test_a_price_level_jump_is_named_at_both_ends_and_nowhere_else():
    walk = random_walk_candles(24 * 60, seed=3, start_price=2500.0)  # 2024-01-01 .. 2024-02-29
    wrong = pl.col("timestamp").dt.month() == 2
    scaled = walk.with_columns(
        *(pl.when(wrong).then(pl.col(c) * 23).otherwise(pl.col(c)).alias(c) for c in ("open", "high", "low", "close"))
    )
    tail = random_walk_candles(48, seed=4, start=utc(2024, 3, 1), start_price=float(walk["close"][-1]))
    breaks = continuity_breaks(keyed(pl.concat([scaled, tail])), atr_period=14, atr_multiple=25)
    assert breaks["timestamp"].to_list() == [utc(2024, 2, 1), utc(2024, 3, 1)]
    assert round(breaks["ratio"][0]) == 23 and breaks["previous_close"][0] == walk.filter(~wrong)["close"][-1]
    # Scoped to the months just written: their own bars and the first bar after them, not the rest.
    scoped = continuity_breaks(keyed(pl.concat([scaled, tail])), 14, 25, months=[utc(2024, 1, 1).date()])
    assert scoped["timestamp"].to_list() == [utc(2024, 2, 1)]


def test_real_btc_and_eth_hourly_history_has_no_break_at_the_default_multiple(btc_hourly):
    from itff_platform.market.sample import SampleCandleSource
    from itff_platform.settings import Settings

    eth = SampleCandleSource().fetch("ETHUSDT", "1h", utc(2021, 1, 1), utc(2025, 1, 1))
    both = pl.concat(
        [keyed(btc_hourly.filter(pl.col("volume") > 0), "BTCUSDT"), keyed(eth.filter(pl.col("volume") > 0))]
    )
    assert continuity_breaks(both, 14, Settings().lake.continuity_atr_multiple).is_empty()
    assert continuity_breaks(both, 14, 15).height >= 1  # the 2023-08-29 BTC bar moved 19 ATRs: the margin is real
