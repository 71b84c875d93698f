from datetime import timedelta

import polars as pl

from itff_platform.features.silver import history_bars_needed, read_span, window_frames
from itff_platform.settings import Settings
from itff_platform_tests.conftest import random_walk_candles, utc


def silver_months(bronze, settings, months, since=None) -> pl.DataFrame:
    """The months' silver rows as refresh_silver computes them: each month's anchored window (window_frames)."""
    return pl.concat(
        pl.collect_all([rows for _, rows in window_frames(bronze, settings, months, since)], engine="in-memory")
    )


def test_one_month_alone_is_bit_identical_to_a_full_rebuild(btc_hourly):
    settings = Settings()
    candles = btc_hourly.filter(pl.col("volume") > 0)
    months = [utc(2022, m, 1) for m in range(1, 13)]
    rebuild = silver_months(candles, settings, months)

    march = utc(2022, 3, 1)
    read_from, read_to = read_span(settings, march, utc(2022, 4, 1))
    just_the_window = candles.filter(pl.col("timestamp").is_between(read_from, read_to, closed="left"))
    alone = silver_months(just_the_window, settings, [march])
    assert alone.height == 31 * 24
    assert alone.equals(rebuild.filter(pl.col("timestamp").dt.month() == 3))


def test_one_new_day_on_one_minute_bars_is_bit_identical_to_a_full_rebuild():
    settings = Settings(interval="1m")
    candles = random_walk_candles(60 * 24 * 50, step_s=60, start=utc(2024, 1, 1))  # to 2024-02-19
    rebuild = silver_months(candles, settings, [utc(2024, 1, 1), utc(2024, 2, 1)])
    day = utc(2024, 2, 18)
    update = silver_months(candles, settings, [utc(2024, 2, 1)], since=day)
    assert update["timestamp"].min() == day and update.height == 2 * 60 * 24
    assert update.equals(rebuild.filter(pl.col("timestamp") >= day))


def test_the_warm_up_covers_every_rolling_window():
    settings = Settings()
    needed = history_bars_needed(settings)
    assert needed > settings.features.regime_volatility_lookback + settings.features.volatility_window
    assert needed > settings.features.daily_range_days * settings.bars_per_day
    start, end = utc(2024, 3, 1), utc(2024, 4, 1)
    read_from, read_to = read_span(settings, start, end)
    assert start - read_from == needed * timedelta(hours=1)
    assert read_to - end == settings.features.label_horizon * timedelta(hours=1)


def test_a_month_alone_equals_the_rebuild_when_gaps_stretch_the_daily_range_look_back():
    """The daily range is computed once over the whole read, and reads 14 days of bars back by row. A gap just
    after the month's read starts pushes that look-back before the read: the rebuild, which holds those bars,
    must still give what the month alone (which does not) gives."""
    settings = Settings(interval="1m")
    candles = random_walk_candles(60 * 24 * 70, step_s=60, start=utc(2023, 12, 20))  # to 2024-02-28
    march_like = utc(2024, 2, 1)
    read_from, _ = read_span(settings, march_like, utc(2024, 3, 1))
    ts = pl.col("timestamp")
    gap = ts.is_between(read_from + timedelta(hours=1), read_from + timedelta(days=2), closed="left")
    candles = candles.filter(~gap)
    rebuild = silver_months(candles, settings, [utc(2024, 1, 1), march_like])
    alone = silver_months(candles.filter(ts >= read_from), settings, [march_like])
    early = alone.filter(ts < march_like + timedelta(days=1))
    assert early["average_daily_range"].null_count() > 0  # the look-back does reach before the read
    assert alone.equals(rebuild.filter(ts >= march_like))


def test_positions_are_search_sorted_of_each_instant():
    from itff_platform.features.silver import positions

    stamps = random_walk_candles(500, start=utc(2024, 1, 1))["timestamp"]
    instants = [utc(2023, 12, 1), stamps[0], stamps[17] + timedelta(minutes=1), stamps[499], utc(2024, 3, 1)]
    assert positions(stamps, instants) == [stamps.search_sorted(t, side="left") for t in instants]
    assert positions(stamps, []) == []


def test_windows_and_fingerprints_find_every_month_in_one_search(monkeypatch):
    """search_sorted with a Python datetime builds a literal per call (~0.8 ms): a 10M-row rebuild's 229 months made
    1,400 such calls (1.1 s of CPU); the windows and the silver fingerprints now search all their bounds at once."""
    from itff_platform.features.silver import windows
    from itff_platform.lake.incremental import silver_fingerprints

    settings = Settings()
    bronze = random_walk_candles(24 * 200, start=utc(2024, 1, 1)).with_columns(
        pl.lit("1h").alias("interval"), pl.lit("BTCUSDT").alias("symbol")
    )
    months = [utc(2024, m, 1) for m in range(2, 7)]
    calls = []
    search = pl.Series.search_sorted
    monkeypatch.setattr(pl.Series, "search_sorted", lambda self, *a, **k: calls.append(1) or search(self, *a, **k))
    found = windows(bronze, settings, months)
    silver_fingerprints(settings, bronze, months)
    assert len(calls) == 2
    for window in found:
        rows = window.rows(settings)
        assert rows["timestamp"].min() == window.month and rows["timestamp"].dt.month().n_unique() == 1
