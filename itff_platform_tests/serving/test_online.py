"""Online features from posted candles: equal to the batch path, and the same from one call to the next."""

from datetime import datetime

import numpy as np
import polars as pl
import pytest

from itff_platform.features.labels import LABEL_COLUMNS
from itff_platform.features.silver import build_features, feature_columns, window_frames
from itff_platform.serving.candle_windows import OnlineFeatures, features_from_candles
from itff_platform.serving.online import (
    Candle,
    RequestError,
    check_window,
    checked_candles,
)
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
    import itff_platform.serving.candle_windows as module

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
    fresh = OnlineFeatures().rows(frame, settings, "1h").tail(3)  # the whole window computed (this one is folded)
    np.testing.assert_allclose(computed[0], fresh.select(names).to_numpy(), rtol=1e-9, atol=1e-12)

    class Past(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2024, 1, 1, tzinfo=tz)

    import itff_platform.serving.online as checks  # the clock check_not_future reads

    monkeypatch.setattr(checks, "datetime", Past)
    with pytest.raises(RequestError, match="is in the future"):
        module.remembered_features(frame, settings, 3, names, "1h")


def _batch_answer(frame: pl.DataFrame, settings: Settings, rows: int, names: list[str]):
    batch = build_features(frame, settings).collect(engine="in-memory").tail(rows)
    return batch.select(names).to_numpy(), batch["regime"][-1], batch["timestamp"][-1]


# The worst relative difference measured between a folded window and build_features on it, over 200 slides of
# the sample (wavetrend_signal: a 4-bar mean of an EMA of an EMA, seeded at the anchor's first bar instead).
FOLDED_WORST_RELATIVE = 3.7e-11


def test_a_sliding_window_is_folded_bar_by_bar_and_equals_build_features_within_1e_9(btc_hourly):
    """72 slides of one bar over the real sample (three anchors), for a one-row model and a sequence model's
    25 rows: every feature within 1e-9 relative (measured: FOLDED_WORST_RELATIVE), the regime and time equal;
    build_features runs once per anchor, and each window folds in only its newest bar."""
    settings = Settings()
    names = feature_columns(settings)
    frames = [
        frame.select("timestamp", "open", "high", "low", "close", "volume")
        for frame in (btc_hourly.slice(20_000 + i, WINDOW) for i in range(72))
    ]
    online = OnlineFeatures()
    worst = 0.0
    for frame in frames:
        for rows in (1, 25):
            x, regime, at = online.features(frame, settings, "1h", rows, names)
            batch_x, batch_regime, batch_at = _batch_answer(frame, settings, rows, names)
            assert (regime, at) == (batch_regime, batch_at)
            np.testing.assert_allclose(x, batch_x, rtol=1e-9, atol=1e-12)
            worst = max(worst, float(np.max(np.abs(x - batch_x) / np.maximum(np.abs(batch_x), 1e-12))))
    assert worst <= FOLDED_WORST_RELATIVE
    # Four anchors at most (the next one made ahead, in the background), and each window's newest bar folded.
    assert online.computed <= 5 and online.folded <= len(frames) + 2 * 24, (online.computed, online.folded)
    # rows() asked about a folded window computes the whole window: build_features bit for bit.
    batch = build_features(frames[-1], settings).collect(engine="in-memory").drop(LABEL_COLUMNS)
    assert online.rows(frames[-1], settings, "1h").equals(batch)


def test_a_folded_windows_features_are_a_function_of_the_window_alone(btc_hourly):
    """Bit for bit the same answer for a window folded after its predecessors, alone in a fresh worker, or in
    another thread: the anchor and the bars folded depend only on the window's content."""
    from concurrent.futures import ThreadPoolExecutor

    settings = Settings()
    names = feature_columns(settings)
    candles = btc_hourly.select("timestamp", "open", "high", "low", "close", "volume")
    frames = [candles.slice(21_000 + i, WINDOW) for i in range(30)]
    sliding = OnlineFeatures()
    in_order = [sliding.features(frame, settings, "1h", 25, names) for frame in frames]
    assert sliding.folded < len(frames) + 24  # the later windows continued the earlier ones
    with ThreadPoolExecutor(4) as pool:
        alone = list(pool.map(lambda f: OnlineFeatures().features(f, settings, "1h", 25, names), frames))
    for one, other in zip(in_order, alone, strict=True):
        assert one[0].tobytes() == other[0].tobytes() and one[1:] == other[1:]


def test_a_window_that_does_not_continue_the_last_one_is_folded_from_its_own_bars(btc_hourly):
    """A changed bar in the anchor, a changed bar among the folded ones, a gap, and a broken new bar: each
    answered as build_features answers that window (or refused as check_window refuses it)."""
    settings = Settings()
    names = feature_columns(settings)
    base = btc_hourly.select("timestamp", "open", "high", "low", "close", "volume").slice(22_000, WINDOW + 1)
    online = OnlineFeatures()
    online.features(base.head(WINDOW), settings, "1h", 1, names)  # the anchor, and a window folded from it
    nudge = pl.int_range(pl.len())

    def changed(frame: pl.DataFrame, row: int, factor: float) -> pl.DataFrame:
        scaled = [pl.when(nudge == row).then(pl.col(c) * factor).otherwise(pl.col(c)).alias(c) for c in ("high",)]
        return frame.with_columns(scaled)

    slid = base.tail(WINDOW)
    cases = [
        changed(slid, 300, 1.01),  # inside the anchor: another anchor
        changed(slid, WINDOW - 3, 1.01),  # among the folded bars: not continued from there
        pl.concat([base.head(400), base.slice(401, WINDOW - 400)]),  # a missing bar: other bars, other anchor
    ]
    for frame in cases:
        x, regime, at = online.features(frame, settings, "1h", 1, names)
        batch_x, batch_regime, batch_at = _batch_answer(frame, settings, 1, names)
        assert (regime, at) == (batch_regime, batch_at)
        np.testing.assert_allclose(x, batch_x, rtol=1e-9, atol=1e-12)
    broken = changed(slid, WINDOW - 1, 0.5)  # the new bar's high below its low
    first = base.head(WINDOW).with_columns(pl.when(nudge == 0).then(-1.0).otherwise(pl.col("volume")).alias("volume"))
    for frame, position, rule in ((broken, WINDOW - 1, "high: must be"), (first, 0, "volume: must be > 0")):
        with pytest.raises(RequestError) as folded_refusal:
            online.features(frame, settings, "1h", 1, names)
        with pytest.raises(RequestError) as full_refusal:
            check_window(frame, "1h")
        assert str(folded_refusal.value) == str(full_refusal.value)
        assert str(folded_refusal.value).startswith(f"candles[{position}].{rule}")


def _daily(btc_hourly: pl.DataFrame, bars: int) -> pl.DataFrame:
    """The sample's hourly bars relabelled one day apart (from a 24-day boundary): a 1d window to fold."""
    start = (utc(2019, 1, 1).timestamp() // 86400 // 24 + 1) * 24 * 86400 * 1_000_000
    candles = btc_hourly.select("timestamp", "open", "high", "low", "close", "volume").slice(20_000, bars)
    stamps = pl.lit(int(start)) + pl.int_range(pl.len()).cast(pl.Int64) * 86400 * 1_000_000
    return candles.with_columns(stamps.cast(pl.Datetime("us", "UTC")).alias("timestamp"))


def test_daily_bars_are_folded_too(btc_hourly):
    """With one bar a day the day's earlier highs and lows are none: the fold crashed (IndexError, a 500) and
    read too few typical prices for the CCI."""
    settings = Settings(interval="1d")
    names = feature_columns(settings)
    online = OnlineFeatures()
    bars = _daily(btc_hourly, WINDOW + 2)
    for i in range(3):
        frame = bars.slice(i, WINDOW)
        x, regime, at = online.features(frame, settings, "1d", 1, names)
        batch_x, batch_regime, batch_at = _batch_answer(frame, settings, 1, names)
        assert (regime, at) == (batch_regime, batch_at)
        np.testing.assert_allclose(x, batch_x, rtol=1e-9, atol=1e-12)
    assert online.folded > 0


def test_the_smoothers_step_as_polars_does_bit_for_bit(btc_hourly):
    """Folded from an anchor starting where the window starts, every smoother's state is polars' own, bit for bit
    (ewm_mean(adjust=False) is w + a * (x - w), the typical price (h + l + c) * (1 / 3)), on a market and on a
    low-volatility copy of it (prices 1 +- 1e-4), where one ulp per step reached 5e-7 of the WaveTrend."""
    from itff_platform.features.carried import CARRIED_COLUMNS, SMOOTHED, FoldState

    settings = Settings()
    market = btc_hourly.select("timestamp", "open", "high", "low", "close", "volume").slice(28_000, WINDOW)
    calm = market.with_columns(
        (1.0 + (pl.col(c) / pl.col("close").mean() - 1) * 1e-4).alias(c) for c in ("open", "high", "low", "close")
    )
    for frame in (market, calm):
        anchor = build_features(frame.head(WINDOW - 4), settings, keep=CARRIED_COLUMNS).collect(engine="in-memory")
        state = FoldState.after(anchor, settings)
        for row in frame.tail(4).iter_rows():
            state = state.fold(settings, int(row[0].timestamp() * 1_000_000), tuple(row[1:]), 0).state
        whole = build_features(frame, settings, keep=CARRIED_COLUMNS).collect(engine="in-memory")
        assert {k: state.smoothed[k] for k in SMOOTHED} == {k: whole[k][-1] for k in SMOOTHED}


def test_a_low_volatility_window_is_computed_whole_rather_than_answered_differently(btc_hourly):
    """A stablecoin's 1e-5 wiggles: polars' sliding rolling sums round differently from the fold's by up to 4e-9
    of the CCI. Such windows are not folded (carried.conditioned), so the answer is build_features' own."""
    settings = Settings()
    names = feature_columns(settings)
    market = btc_hourly.select("timestamp", "open", "high", "low", "close", "volume").slice(28_000, WINDOW + 40)
    calm = market.with_columns(
        (1.0 + (pl.col(c) / pl.col("close").mean() - 1) * 1e-4).alias(c) for c in ("open", "high", "low", "close")
    )
    online = OnlineFeatures()
    for i in range(0, 41, 4):
        frame = calm.slice(i, WINDOW)
        x, regime, at = online.features(frame, settings, "1h", 1, names)
        batch_x, batch_regime, batch_at = _batch_answer(frame, settings, 1, names)
        assert (regime, at) == (batch_regime, batch_at)
        np.testing.assert_allclose(x, batch_x, rtol=1e-9, atol=1e-12)


def test_the_answer_does_not_depend_on_which_model_asked_first(btc_hourly):
    """A window folded for a one-row model, then asked for more rows than the fold answers for: it was answered
    from anchor rows with too little history (450 rows: refused, where a fresh worker answers)."""
    settings = Settings()
    names = feature_columns(settings)
    frame = btc_hourly.select("timestamp", "open", "high", "low", "close", "volume").slice(20_010, WINDOW)
    for rows in (64, 450):
        first = OnlineFeatures()
        first.features(frame, settings, "1h", 1, names)
        after, fresh = (
            first.features(frame, settings, "1h", rows, names),
            OnlineFeatures().features(frame, settings, "1h", rows, names),
        )
        assert after is not None and fresh is not None
        assert after[0].tobytes() == fresh[0].tobytes() and after[1:] == fresh[1:]


def test_anchors_of_many_sliding_streams_are_kept(btc_hourly):
    """Ten symbols sliding in turn: anchors were kept eight, in creation order, so every window made one anew."""
    settings = Settings()
    names = feature_columns(settings)
    candles = btc_hourly.select("timestamp", "open", "high", "low", "close", "volume")
    online = OnlineFeatures()
    for i in range(4):
        for stream in range(10):
            online.features(candles.slice(20_000 + stream * 900 + i, WINDOW), settings, "1h", 1, names)
    assert online.computed <= 2 * 10, online.computed  # an anchor per stream, and maybe the next one ahead
    import threading

    assert sum(t.name.startswith("candle-anchor") for t in threading.enumerate()) <= 1  # one shared thread


def test_a_failed_anchor_is_logged_and_neither_fails_the_window_nor_hides_its_refusal(btc_hourly, caplog):
    from concurrent.futures import Future

    import itff_platform.serving.candle_windows as module

    settings = Settings()
    names = feature_columns(settings)
    frame = btc_hourly.select("timestamp", "open", "high", "low", "close", "volume").slice(20_000, WINDOW)
    online = OnlineFeatures()
    compute = online._compute

    def anchors_fail(bars, *args):
        if bars.height == WINDOW - module.ANCHOR_BARS:
            raise RuntimeError("no memory for an anchor")
        return compute(bars, *args)

    online._compute = anchors_fail  # type: ignore[method-assign]
    x, regime, at = online.features(frame, settings, "1h", 1, names)  # computed whole
    assert "making a candle anchor failed" in caplog.text
    batch_x, batch_regime, batch_at = _batch_answer(frame, settings, 1, names)
    assert x.tobytes() == batch_x.tobytes() and (regime, at) == (batch_regime, batch_at)
    # A broken window whose anchor failed while it waited: its refusal, not the anchor's error.
    slid = btc_hourly.select("timestamp", "open", "high", "low", "close", "volume").slice(20_001, WINDOW)
    broken = slid.with_columns(
        pl.when(pl.int_range(pl.len()) == WINDOW - 1).then(-1.0).otherwise("volume").alias("volume")
    )
    stamps = broken["timestamp"].dt.epoch("us").to_numpy()
    start = int(np.flatnonzero(module.bar_numbers_of(stamps[:24], "1h") % 24 == 0)[0])
    failed: Future = Future()
    failed.set_exception(RuntimeError("anchor failed"))
    digest = module._content_digest(broken.slice(start, WINDOW - 24))
    online._anchors[("1h", online._settings_key(settings), digest)] = failed
    with pytest.raises(RequestError, match=rf"candles\[{WINDOW - 1}\]\.volume"):
        online.features(broken, settings, "1h", 1, names)
