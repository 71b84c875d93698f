import math

import polars as pl
import pytest

from itff_platform.features.silver import build_features
from itff_platform.settings import Settings
from itff_platform_tests.features import reference as ref

ROWS = 1200  # 50 days of real hourly BTCUSDT: past every warm-up, quick for the loop references


@pytest.fixture(scope="module")
def sample():
    from itff_platform.market.sample import SampleCandleSource
    from itff_platform_tests.conftest import utc

    candles = SampleCandleSource().fetch("BTCUSDT", "1h", utc(2023, 1, 1), utc(2023, 3, 1)).head(ROWS)
    settings = Settings()
    return candles, build_features(candles, settings).collect(), settings


def assert_matches(actual: pl.Series, expected: list, name: str) -> None:
    assert len(actual) == len(expected)
    for i, (a, e) in enumerate(zip(actual.to_list(), expected)):
        if e is None or (isinstance(e, float) and math.isnan(e)):
            assert a is None, f"{name}[{i}] should be undefined, got {a}"
        else:
            assert a is not None, f"{name}[{i}] is null, expected {e}"
            assert a == pytest.approx(e, rel=1e-9, abs=1e-9), f"{name}[{i}]: {a} != {e}"


def columns(candles):
    return [candles[c].to_list() for c in ("high", "low", "close", "volume")]


def test_log_returns_and_realized_volatility(sample):
    candles, features, settings = sample
    close = candles["close"].to_list()
    for lag in settings.features.return_lags:
        assert_matches(features[f"log_return_{lag}"], ref.log_return(close, lag), f"log_return_{lag}")
    assert_matches(
        features["realized_vol"], ref.realized_vol(close, settings.features.volatility_window), "realized_vol"
    )


def test_rsi_atr_adx_use_wilder_smoothing(sample):
    candles, features, settings = sample
    high, low, close, _ = columns(candles)
    assert_matches(features["rsi"], ref.rsi(close, settings.features.rsi_period), "rsi")
    atr = ref.atr(high, low, close, settings.features.atr_period)
    assert_matches(features["atr"], atr, "atr")
    assert_matches(features["atr_pct"], [None if a is None else a / c for a, c in zip(atr, close)], "atr_pct")
    adx, plus_di, minus_di = ref.adx(high, low, close, settings.features.adx_period)
    assert_matches(features["adx"], adx, "adx")
    assert_matches(features["plus_di"], plus_di, "plus_di")
    assert_matches(features["minus_di"], minus_di, "minus_di")
    # Wilder's seeding: RSI and ATR first exist on bar n, ADX on bar 2n - 1.
    assert features["rsi"].null_count() == settings.features.rsi_period
    assert features["adx"].null_count() == 2 * settings.features.adx_period - 1


def test_cci_and_wavetrend(sample):
    candles, features, settings = sample
    high, low, close, _ = columns(candles)
    assert_matches(features["cci"], ref.cci(high, low, close, settings.features.cci_period), "cci")
    wt1, wt2 = ref.wavetrend(high, low, close, settings.features.wavetrend_channel, settings.features.wavetrend_average)
    assert_matches(features["wavetrend"], wt1, "wavetrend")
    assert_matches(features["wavetrend_signal"], wt2, "wavetrend_signal")


def test_macd(sample):
    candles, features, settings = sample
    close = candles["close"].to_list()
    line, signal, hist = ref.macd(
        close, settings.features.macd_fast, settings.features.macd_slow, settings.features.macd_signal
    )
    assert_matches(features["macd"], line, "macd")
    assert_matches(features["macd_signal"], signal, "macd_signal")
    assert_matches(features["macd_hist"], hist, "macd_hist")
    assert_matches(features["macd_hist_pct"], [h / c for h, c in zip(hist, close)], "macd_hist_pct")


def test_bollinger_volume_zscore_and_average_daily_range(sample):
    candles, features, settings = sample
    high, low, close, volume = columns(candles)
    assert_matches(
        features["bollinger_pct_b"],
        ref.percent_b(close, settings.features.bollinger_period, settings.features.bollinger_width),
        "%b",
    )
    assert_matches(
        features["volume_zscore"], ref.volume_zscore(volume, settings.features.volume_zscore_window), "volume_zscore"
    )
    adr = ref.average_daily_range(high, low, close, settings.features.daily_range_days, settings.bars_per_day)
    assert_matches(features["average_daily_range"], adr, "average_daily_range")


def test_time_of_day_and_day_of_week_encodings(sample):
    _candles, features, _ = sample
    for ts, hs, hc, ws, wc in features.select(
        "timestamp", "hour_sin", "hour_cos", "weekday_sin", "weekday_cos"
    ).iter_rows():
        day = (ts.hour * 3600 + ts.minute * 60) / 86400
        assert hs == pytest.approx(math.sin(2 * math.pi * day)) and hc == pytest.approx(math.cos(2 * math.pi * day))
        assert ws == pytest.approx(math.sin(2 * math.pi * ts.weekday() / 7))
        assert wc == pytest.approx(math.cos(2 * math.pi * ts.weekday() / 7))
