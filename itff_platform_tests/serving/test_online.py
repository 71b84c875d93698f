"""Online features from posted candles: equal to the batch path, and the same from one call to the next."""

from datetime import datetime

import numpy as np
import polars as pl
import pytest

from itff_platform.features.labels import LABEL_COLUMNS
from itff_platform.features.silver import build_features, feature_columns, window_frames
from itff_platform.serving.online import Candle, OnlineFeatures, RequestError, checked_candles, features_from_candles
from itff_platform.settings import Settings
from itff_platform_tests.conftest import utc

WINDOW = 800  # what TradingView clients send


def candles_of(frame: pl.DataFrame) -> list[Candle]:
    return [Candle(**row) for row in frame.select("timestamp", "open", "high", "low", "close", "volume").to_dicts()]


def windows(btc_hourly: pl.DataFrame, ends: list[datetime]) -> list[list[Candle]]:
    return [candles_of(btc_hourly.filter(pl.col("timestamp") <= end).tail(WINDOW)) for end in ends]


def test_online_features_are_build_features_on_the_window_bit_for_bit(btc_hourly):
    settings = Settings()
    online = OnlineFeatures()
    # Sliding one bar at a time, then a window seen before (remembered), over the real sample.
    ends = [utc(2024, 2, 10, h) for h in range(6)] + [utc(2024, 2, 10, 0)]
    for candles in windows(btc_hourly, ends):
        got = online.rows(candles, settings, "1h")
        # The lake's engine (lake/delta.py). Polars' streaming engine, the default, splits the rows into morsels
        # and rounds rolling sums differently (up to 2e-11 on the CCI): the online path never uses it.
        batch = build_features(checked_candles(candles, settings, "1h"), settings).collect(engine="in-memory")
        batch = batch.drop(LABEL_COLUMNS)
        assert got.columns == batch.columns
        assert got.equals(batch)  # every column, nulls in place, floats bit for bit
    assert online.computed == 6  # the seventh window was the first again: remembered, not recomputed


def test_online_features_equal_the_lakes_silver_rows_within_1e_9(btc_hourly):
    """The last bar of an 800-candle window against the same bar of silver (each month computed from its own
    anchored window, as the lake does): the indicators forget their different seeds to far below 1e-9."""
    settings = Settings()
    names = feature_columns(settings)
    month = utc(2024, 2, 1)
    bronze = btc_hourly.select("timestamp", "open", "high", "low", "close", "volume")
    silver = pl.concat([rows.collect(engine="in-memory") for _, rows in window_frames(bronze, settings, [month])])
    ends = silver["timestamp"].to_list()[:: len(silver) // 12]
    for end, candles in zip(ends, windows(btc_hourly, ends), strict=True):
        x, regime, at = features_from_candles(candles, settings, 1, names, "1h")
        lake = silver.filter(pl.col("timestamp") == end)
        assert at == end and regime == lake["regime"][0]
        np.testing.assert_allclose(x[0], lake.select(names).to_numpy()[0], rtol=1e-9, atol=1e-12)


def test_two_calls_on_the_same_candles_give_bit_identical_answers(btc_hourly):
    settings = Settings()
    names = feature_columns(settings)
    (candles,) = windows(btc_hourly, [utc(2024, 3, 1)])
    fresh = [OnlineFeatures().rows(candles, settings, "1h") for _ in range(3)]  # computed anew each time
    online = OnlineFeatures()
    first, again = online.rows(candles, settings, "1h"), online.rows(candles, settings, "1h")
    for other in [*fresh[1:], first, again]:
        assert other.equals(fresh[0])
        assert other.select(names).to_numpy().tobytes() == fresh[0].select(names).to_numpy().tobytes()
    answers = [features_from_candles(candles, settings, 25, names, "1h") for _ in range(2)]
    assert answers[0][0].tobytes() == answers[1][0].tobytes() and answers[0][1:] == answers[1][1:]


def test_a_refused_window_stays_refused_and_the_clock_is_asked_every_time(btc_hourly, monkeypatch):
    settings = Settings()
    online = OnlineFeatures()
    (candles,) = windows(btc_hourly, [utc(2024, 3, 1)])
    broken = [*candles[:-1], candles[-1].model_copy(update={"high": candles[-1].low / 2})]
    for _ in range(2):
        with pytest.raises(RequestError, match=rf"candles\[{WINDOW - 1}\]\.high: must be >= low"):
            online.rows(broken, settings, "1h")
    online.rows(candles, settings, "1h")
    assert online.computed == 1  # the broken window was judged once, computed never

    import itff_platform.serving.online as module

    class Past(datetime):  # a clock before the window's last bar: the remembered window is now in the future
        @classmethod
        def now(cls, tz=None):
            return datetime(2024, 1, 1, tzinfo=tz)

    monkeypatch.setattr(module, "datetime", Past)
    with pytest.raises(RequestError, match="is in the future"):
        online.rows(candles, settings, "1h")


def test_a_refused_window_sent_again_and_again_keeps_a_traceback_of_one_request(btc_hourly):
    """The remembered refusal is raised afresh: re-raising one cached exception object appended every request's
    frames to its traceback, a chain (holding the candles) that grew for as long as the window stayed cached."""
    settings = Settings()
    online = OnlineFeatures()
    (candles,) = windows(btc_hourly, [utc(2024, 3, 1)])
    broken = [*candles[:-1], candles[-1].model_copy(update={"high": candles[-1].low / 2})]
    depths = []
    for _ in range(5):
        with pytest.raises(RequestError) as refused:
            online.rows(broken, settings, "1h")
        depths.append(len(refused.traceback))
    assert depths[-1] == depths[1], depths


def test_candle_times_are_read_as_utc_with_or_without_an_offset(btc_hourly):
    from datetime import timedelta, timezone

    settings = Settings()
    (candles,) = windows(btc_hourly, [utc(2024, 3, 1)])
    plus_one = timezone(timedelta(hours=1))
    naive = [c.model_copy(update={"timestamp": c.timestamp.replace(tzinfo=None)}) for c in candles]
    shifted = [c.model_copy(update={"timestamp": c.timestamp.astimezone(plus_one)}) for c in candles]
    expected = checked_candles(candles, settings, "1h")
    assert expected["timestamp"][-1] == utc(2024, 3, 1)
    for other in (naive, shifted):
        assert checked_candles(other, settings, "1h").equals(expected)
    year_one = [candles[0].model_copy(update={"timestamp": datetime(1, 1, 1, tzinfo=plus_one)}), *candles[1:]]
    with pytest.raises(RequestError, match=r"candles\[0\]\.timestamp: not representable in UTC"):
        checked_candles(year_one, settings, "1h")


def test_a_remembered_window_is_answered_without_computing_and_still_asks_the_clock(btc_hourly, monkeypatch):
    """What the event loop asks before hopping to a thread: the same answer as a computation, shared read-only
    by every request on the window, and nothing for a window not seen (no computation on the loop)."""
    import itff_platform.serving.online as module

    settings = Settings()
    names = feature_columns(settings)
    monkeypatch.setattr(module, "ONLINE", OnlineFeatures())
    (candles,) = windows(btc_hourly, [utc(2024, 3, 1)])
    frame = checked_candles(candles, settings, "1h")
    assert module.remembered_features(frame, settings, 3, names, "1h") is None
    assert module.ONLINE.computed == 0
    computed = features_from_candles(frame, settings, 3, names, "1h")
    remembered = module.remembered_features(frame, settings, 3, names, "1h")
    again = module.remembered_features(frame.clone(), settings, 3, names, "1h")  # equal content, another object
    assert remembered is not None and again is not None and module.ONLINE.computed == 1
    for answer in (remembered, again):
        assert answer[0].tobytes() == computed[0].tobytes() and answer[1:] == computed[1:]
        assert not answer[0].flags.writeable
    fresh = OnlineFeatures().rows(frame, settings, "1h").tail(3)
    assert computed[0].tobytes() == fresh.select(names).to_numpy().tobytes()

    class Past(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2024, 1, 1, tzinfo=tz)

    monkeypatch.setattr(module, "datetime", Past)
    with pytest.raises(RequestError, match="is in the future"):
        module.remembered_features(frame, settings, 3, names, "1h")
