import pytest

from itff_platform.market.binance import BinanceCandleSource, BinanceError, _archive_periods
from itff_platform_tests.conftest import utc
from itff_platform_tests.market.binance_wire import FakeBinance


@pytest.fixture
def exchange(btc_hourly):
    with FakeBinance({"BTCUSDT": btc_hourly}) as fake:
        yield fake


def source_for(fake: FakeBinance, sleeps: list[float]) -> BinanceCandleSource:
    return BinanceCandleSource(base_url=fake.url, archive_url=fake.url, max_retries=3, timeout_s=5, sleep=sleeps.append)


def test_rest_pages_by_start_time_1000_at_a_time_and_matches_the_sample(exchange, btc_hourly):
    sleeps: list[float] = []
    start, end = utc(2024, 1, 1), utc(2024, 4, 1)  # 2184 hourly bars: three pages
    frame = source_for(exchange, sleeps).fetch("BTCUSDT", "1h", start, end)
    expected = btc_hourly.filter(btc_hourly["timestamp"].is_between(start, end, closed="left"))
    assert frame.equals(expected)
    klines = [r for r in exchange.requests if r.startswith("/api/v3/klines")]
    assert len(klines) == 3 and all("limit=1000" in r for r in klines)
    assert "startTime=1704067200000" in klines[0]
    assert f"startTime={int(utc(2024, 2, 11, 16).timestamp() * 1000)}" in klines[1]  # last open time + 1h
    assert sleeps == []


def test_backs_off_on_429_418_and_5xx_honouring_retry_after(exchange):
    exchange.scripted_failures = [(429, {"Retry-After": "7"}), (418, {"Retry-After": "30"}), (503, {})]
    sleeps: list[float] = []
    frame = source_for(exchange, sleeps).fetch("BTCUSDT", "1h", utc(2024, 1, 1), utc(2024, 1, 2))
    assert frame.height == 24
    assert sleeps == [7.0, 30.0, 4.0]  # Retry-After when given, else exponential backoff


def test_gives_up_after_the_retry_budget_with_a_clear_error(exchange):
    exchange.scripted_failures = [(503, {})] * 10
    with pytest.raises(BinanceError, match="answered 503"):
        source_for(exchange, []).fetch("BTCUSDT", "1h", utc(2024, 1, 1), utc(2024, 1, 2))


def test_pauses_for_the_next_minute_when_the_weight_budget_is_nearly_spent(exchange):
    exchange.used_weight = 5000
    sleeps: list[float] = []
    source_for(exchange, sleeps).fetch("BTCUSDT", "1h", utc(2024, 1, 1), utc(2024, 1, 2))
    assert len(sleeps) == 1 and 1 <= sleeps[0] <= 61


def test_an_unknown_symbol_is_a_clear_error_not_a_retry(exchange):
    with pytest.raises(BinanceError, match=r"answered 400.*Invalid symbol"):
        source_for(exchange, []).fetch("NOPEUSDT", "1h", utc(2024, 1, 1), utc(2024, 1, 2))


def test_archives_use_monthly_zips_for_whole_months_and_daily_for_the_rest(exchange, btc_hourly):
    start, end = utc(2024, 1, 1), utc(2024, 3, 3)
    frame = source_for(exchange, []).fetch_archive("BTCUSDT", "1h", start, end)
    expected = btc_hourly.filter(btc_hourly["timestamp"].is_between(start, end, closed="left"))
    assert frame.equals(expected)
    names = [r.rsplit("/", 1)[-1] for r in exchange.requests]
    assert names == ["BTCUSDT-1h-2024-01.zip", "BTCUSDT-1h-2024-02.zip", "BTCUSDT-1h-2024-03-01.zip", "BTCUSDT-1h-2024-03-02.zip"]
    assert "/data/spot/monthly/klines/BTCUSDT/1h/" in exchange.requests[0]
    assert "/data/spot/daily/klines/BTCUSDT/1h/" in exchange.requests[2]


def test_archive_periods_split():
    assert _archive_periods(utc(2024, 1, 30).date(), utc(2024, 3, 1).date()) == [
        ("daily", "2024-01-30"), ("daily", "2024-01-31"), ("monthly", "2024-02"),
    ]


def test_the_candle_still_forming_is_left_out():
    from datetime import datetime, timedelta, timezone

    import polars as pl

    now = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    stamps = [now - timedelta(hours=h) for h in (2, 1, 0)]  # the last one opened this hour: not closed yet
    live = pl.DataFrame({"timestamp": stamps, "open": [1.0] * 3, "high": [2.0] * 3, "low": [0.5] * 3, "close": [1.5] * 3,
                         "volume": [10.0] * 3}).with_columns(pl.col("timestamp").dt.cast_time_unit("us"))
    with FakeBinance({"BTCUSDT": live}) as fake:
        frame = source_for(fake, []).fetch("BTCUSDT", "1h", now - timedelta(days=1), now + timedelta(hours=1))
    assert frame["timestamp"].to_list() == stamps[:2]
