import pytest

from itff_platform.market.candles import CANDLE_SCHEMA, CandleFormatError
from itff_platform.market.sample import SampleCandleSource, sample_symbols
from itff_platform_tests.conftest import utc


def test_sample_ships_real_binance_hourly_candles_for_both_symbols():
    assert sample_symbols() == ["BTCUSDT", "ETHUSDT"]
    for symbol in sample_symbols():
        frame = SampleCandleSource().fetch(symbol, "1h", utc(2021, 1, 1), utc(2025, 1, 1))
        assert dict(frame.schema) == CANDLE_SCHEMA
        assert frame.height == 30_592
        assert frame["timestamp"].min() == utc(2021, 4, 4, 20)
        assert frame["timestamp"].max() == utc(2024, 9, 30, 23)


def test_fetch_returns_the_half_open_range_only():
    frame = SampleCandleSource().fetch("BTCUSDT", "1h", utc(2024, 1, 1), utc(2024, 2, 1))
    assert frame.height == 31 * 24
    assert frame["timestamp"].min() == utc(2024, 1, 1) and frame["timestamp"].max() == utc(2024, 1, 31, 23)
    # A close every trader can check: BTCUSDT 2024-01-01 00:00 UTC opened at 42283.58.
    assert frame["open"][0] == 42283.58


def test_sample_refuses_what_it_does_not_have():
    with pytest.raises(CandleFormatError, match="symbol: the packaged sample has"):
        SampleCandleSource().fetch("DOGEUSDT", "1h", utc(2024, 1, 1), utc(2024, 2, 1))
    with pytest.raises(CandleFormatError, match="interval: the packaged sample holds 1h"):
        SampleCandleSource().fetch("BTCUSDT", "5m", utc(2024, 1, 1), utc(2024, 2, 1))
