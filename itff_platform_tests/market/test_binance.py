from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from itff_platform.market.binance import BinanceCandleSource, BinanceError, archived_months
from itff_platform_tests.conftest import utc
from itff_platform_tests.market.binance_wire import FakeBinance


@pytest.fixture
def exchange(btc_hourly):
    with FakeBinance({"BTCUSDT": btc_hourly}) as fake:
        yield fake


def source_for(fake: FakeBinance, sleeps: list[float], now: datetime | None = None) -> BinanceCandleSource:
    clock = {"now": lambda: now} if now else {}
    return BinanceCandleSource(
        base_url=fake.url, archive_url=fake.url, max_retries=3, timeout_s=5, sleep=sleeps.append, **clock
    )


def test_rest_pages_by_start_time_1000_at_a_time_and_matches_the_sample(exchange, btc_hourly):
    sleeps: list[float] = []
    start, end = utc(2024, 1, 1), utc(2024, 4, 1)  # 2184 hourly bars: three pages
    frame = source_for(exchange, sleeps).fetch_klines("BTCUSDT", "1h", start, end)
    expected = btc_hourly.filter(btc_hourly["timestamp"].is_between(start, end, closed="left"))
    assert frame.equals(expected)
    klines = exchange.kline_requests()
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


# 2024: the archives stamp times in ms; 2025 on: in µs. Shifting the real 2024 sample by 366 days lands it in 2025.
YEARS = {"ms archives (2024)": timedelta(0), "µs archives (2025)": timedelta(days=366)}


@pytest.mark.parametrize("shift", YEARS.values(), ids=YEARS.keys())
def test_past_months_come_from_the_monthly_archives_the_current_month_from_rest(btc_hourly, shift):
    candles = btc_hourly.with_columns(pl.col("timestamp") + shift)
    start = utc(2024 + bool(shift), 1, 1)
    end = utc(start.year, 4, 1)
    now = utc(start.year, 3, 15, 12, 30)  # March is in progress
    with FakeBinance({"BTCUSDT": candles}) as fake:
        backfill = source_for(fake, [], now).fetch("BTCUSDT", "1h", start, end)
        assert fake.archive_requests() == [f"BTCUSDT-1h-{start.year}-01.zip", f"BTCUSDT-1h-{start.year}-02.zip"]
        assert (
            len(fake.kline_requests()) == 1
            and f"startTime={int(utc(start.year, 3, 1).timestamp() * 1000)}" in fake.kline_requests()[0]
        )
        fake.requests.clear()
        all_rest = source_for(fake, [], now).fetch_klines("BTCUSDT", "1h", start, end)
        assert fake.archive_requests() == []
    assert backfill.equals(all_rest)
    assert backfill["timestamp"].min() == start and backfill["timestamp"].max() == utc(start.year, 3, 15, 11)
    assert backfill.schema["timestamp"] == pl.Datetime("us", "UTC")


def test_a_month_whose_archive_is_not_published_yet_comes_from_rest(exchange, btc_hourly):
    exchange.unpublished = {"2024-02"}
    start, end = utc(2024, 1, 1), utc(2024, 4, 1)
    frame = source_for(exchange, [], now=utc(2024, 4, 1, 3)).fetch("BTCUSDT", "1h", start, end)
    assert frame.equals(btc_hourly.filter(btc_hourly["timestamp"].is_between(start, end, closed="left")))
    assert exchange.archive_requests() == ["BTCUSDT-1h-2024-01.zip", "BTCUSDT-1h-2024-02.zip", "BTCUSDT-1h-2024-03.zip"]
    klines = exchange.kline_requests()
    assert len(klines) == 1 and f"startTime={int(utc(2024, 2, 1).timestamp() * 1000)}" in klines[0]
    assert f"endTime={int(utc(2024, 3, 1).timestamp() * 1000) - 1}" in klines[0]


def test_archived_months_are_the_whole_months_that_have_ended():
    now = utc(2024, 3, 15)
    assert archived_months(utc(2024, 1, 1), utc(2024, 4, 1), now) == [utc(2024, 1, 1), utc(2024, 2, 1)]
    assert archived_months(utc(2023, 12, 30), utc(2024, 2, 10), now) == [utc(2024, 1, 1)]  # partial months: REST
    assert archived_months(utc(2024, 3, 1), utc(2024, 4, 1), now) == []


def test_the_candle_still_forming_is_left_out():
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    stamps = [now - timedelta(hours=h) for h in (2, 1, 0)]  # the last one opened this hour: not closed yet
    live = pl.DataFrame(
        {
            "timestamp": stamps,
            "open": [1.0] * 3,
            "high": [2.0] * 3,
            "low": [0.5] * 3,
            "close": [1.5] * 3,
            "volume": [10.0] * 3,
        }
    ).with_columns(pl.col("timestamp").dt.cast_time_unit("us"))
    with FakeBinance({"BTCUSDT": live}) as fake:
        frame = source_for(fake, []).fetch("BTCUSDT", "1h", now - timedelta(days=1), now + timedelta(hours=1))
    assert frame["timestamp"].to_list() == stamps[:2]
