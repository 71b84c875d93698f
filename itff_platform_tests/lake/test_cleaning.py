from datetime import UTC, datetime

import polars as pl

from itff_platform.lake.cleaning import clean_raw, find_gaps
from itff_platform.lake.delta import with_month
from itff_platform.lake.schemas import BronzeCandles, schema_failures
from itff_platform_tests.conftest import random_walk_candles, utc


def as_raw(candles: pl.DataFrame, symbol: str = "BTCUSDT", batch: str = "b1") -> pl.DataFrame:
    return with_month(candles).with_columns(
        pl.lit("1h").alias("interval"),
        pl.lit(symbol).alias("symbol"),
        pl.lit("test").alias("source"),
        pl.lit(datetime(2024, 6, 1, tzinfo=UTC)).cast(pl.Datetime("us", "UTC")).alias("ingested_at"),
        pl.lit(batch).alias("batch_id"),
    )


def corrupt(frame: pl.DataFrame, row: int, **values) -> pl.DataFrame:
    return frame.with_columns(
        *(
            pl.when(pl.int_range(pl.len()) == row).then(pl.lit(v)).otherwise(pl.col(c)).alias(c)
            for c, v in values.items()
        )
    )


def test_each_broken_rule_quarantines_the_row_with_its_name():
    clean = random_walk_candles(20)
    raw = clean
    raw = corrupt(raw, 1, close=None)
    raw = corrupt(raw, 2, open=float("nan"))
    raw = corrupt(raw, 3, low=-5.0)
    raw = corrupt(raw, 4, volume=0.0)
    raw = corrupt(raw, 5, high=1.0, low=2.0)
    raw = corrupt(raw, 6, high=raw["close"][6] * 0.5, low=raw["close"][6] * 0.4)
    raw = corrupt(raw, 7, timestamp=utc(2024, 1, 1, 7, 30))
    result = clean_raw(as_raw(raw), 3600)
    rules = dict(zip(result.quarantine["timestamp"].dt.hour(), result.quarantine["rule"]))
    assert rules == {
        1: "close: must be a finite number",
        2: "open: must be a finite number",
        3: "low: must be > 0",
        4: "volume: must be > 0",
        5: "high: must be >= low",
        6: "high: must be >= open and close",
        7: "timestamp: must fall on a 3600s bar boundary",
    }
    assert result.bronze.height == 13 and result.reconciles
    assert schema_failures(BronzeCandles, result.bronze).is_empty()


def test_exact_duplicates_collapse_and_conflicting_ones_keep_the_last_received():
    clean = random_walk_candles(10)
    changed = corrupt(clean.slice(3, 1), 0, close=clean["close"][3] * 1.01, high=clean["high"][3] * 1.02)
    raw = pl.concat([as_raw(clean), as_raw(clean.slice(0, 2)), as_raw(changed, batch="b2")])
    result = clean_raw(raw, 3600)
    assert result.raw_rows == 13
    assert result.collapsed_duplicates == 2
    assert result.quarantine.height == 1 and result.quarantine["rule"][0].startswith(
        "timestamp: duplicate with different values"
    )
    assert result.quarantine["close"][0] == clean["close"][3]  # the earlier row is the one set aside
    assert result.bronze.filter(pl.col("timestamp") == clean["timestamp"][3])["close"][0] == changed["close"][0]
    assert result.bronze.height == 10 and result.reconciles
    assert dict(result.rule_counts().iter_rows()) == {
        "timestamp: duplicate with different values; the last received row was kept": 1
    }


def test_real_sample_gaps_are_the_known_binance_outages(btc_hourly):
    result = clean_raw(as_raw(btc_hourly), 3600)
    gaps = find_gaps(result.bronze, 3600, tolerance_bars=0)
    starts = [g.strftime("%Y-%m-%d %H:%M") for g in gaps["gap_after"]]
    assert "2021-04-25 04:00" in starts and "2021-08-13 01:00" in starts and "2023-03-24 11:00" in starts
    # The zero-volume candle Binance printed during the 2023-03-24 outage is quarantined, widening that gap to 2 bars.
    assert result.quarantine.select("timestamp", "rule").row(0) == (utc(2023, 3, 24, 12), "volume: must be > 0")
    assert gaps.filter(pl.col("gap_after") == utc(2023, 3, 24, 11))["missing_bars"][0] == 2
    assert gaps.height == 5 and int(gaps["missing_bars"].sum()) == 13
    assert find_gaps(result.bronze, 3600, tolerance_bars=3).height == 1  # only the 4-bar 2021-08-13 outage


def test_the_numpy_shortcut_refuses_a_row_breaking_each_rule():
    """plainly_valid (the online path's check of a window's new bars) may never pass a row clean_raw
    quarantines: one broken row per rule, every rule of row_rules covered (a new rule fails this test)."""
    from itff_platform.lake.cleaning import plainly_valid, row_rules

    clean = random_walk_candles(20)
    close = clean["close"][6]
    cases = {
        "timestamp: must fall on a 3600s bar boundary": {"timestamp": utc(2024, 1, 1, 6, 30)},
        **{f"{c}: must be a finite number": {c: float("nan")} for c in ("open", "high", "low", "close", "volume")},
        **{f"{c}: must be > 0": {c: -5.0} for c in ("open", "high", "low", "close")},
        "volume: must be > 0": {"volume": 0.0},
        "high: must be >= low": {"high": 1.0, "low": 2.0},
        "high: must be >= open and close": {"high": close * 0.5, "low": close * 0.4},
        "low: must be <= open and close": {"high": close * 2.0, "low": close * 1.5},
    }
    # A request's timestamps are never null (the frame is built from parsed times), so that rule has no case.
    assert set(cases) | {"timestamp: must be present"} == {name for name, _ in row_rules(3600)}

    def shortcut(frame: pl.DataFrame) -> bool:
        values = frame.select("open", "high", "low", "close", "volume").to_numpy()
        return plainly_valid(frame["timestamp"].dt.epoch("us").to_numpy(), values, 3600)

    assert shortcut(clean) and clean_raw(as_raw(clean), 3600).quarantine.is_empty()
    for rule, values in cases.items():
        broken = corrupt(clean, 6, **values)
        assert clean_raw(as_raw(broken), 3600).quarantine.height == 1, rule
        assert not shortcut(broken), rule
