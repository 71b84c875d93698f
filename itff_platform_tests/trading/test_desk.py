"""The order desk on a real Delta ledger in a temp dir, with fixed prices standing in for the lake."""

import multiprocessing
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest

from itff_platform.contracts.costs import round_trip_cost
from itff_platform.settings import Settings
from itff_platform.trading.desk import OrderDesk, OrderRequest, TradeRefusal
from itff_platform.trading.ledger import event
from itff_platform.trading.market import Quote
from itff_platform.trading.sizing import room_under_cap, size_order
from itff_platform.training.backtest import backtest
from itff_platform_tests.conftest import utc


class FixedPrices:
    """Every symbol at one price, with a known annualised volatility."""

    def __init__(self, price: float = 100.0, vol: float | None = None) -> None:
        self.price, self.vol = price, vol

    def mark(self, symbol, as_of=None):
        return Quote(self.price, utc(2024, 9, 30, 23), "newest_close")

    def fill_reference(self, symbol, decided_at):
        return Quote(self.price, utc(2024, 9, 30, 23), "next_open")

    def annualised_vol(self, symbol, as_of=None):
        return self.vol


def desk_for(tmp_path, prices=None, **limits) -> OrderDesk:
    settings = Settings(
        home=tmp_path,
        symbols=["BTCUSDT", "ETHUSDT"],
        **{"confidence_threshold": 0.6, "per_symbol_usd_cap": 2000, "paper_cash": 10_000, **limits},
    )
    return OrderDesk(settings, prices or FixedPrices())


def order(**fields) -> OrderRequest:
    return OrderRequest(**{"symbol": "BTCUSDT", "side": "buy", "qty_usd": 1000.0, "confidence": 0.9, **fields})


def test_sizing_scales_by_confidence_and_volatility_then_clips_at_the_cap():
    calm = size_order(2000, 0.9, +1, 0.0, 5000, annualised_vol=0.04, target_ann_vol=0.08)
    assert calm.final_usd == pytest.approx(1800)  # runbook 004: 2,000 sent, 1,800 traded
    wild = size_order(2000, 0.9, +1, 0.0, 5000, annualised_vol=0.32, target_ann_vol=0.08)
    assert wild.vol_scale == pytest.approx(0.25) and wild.final_usd == pytest.approx(450)
    capped = size_order(2000, 1.0, +1, 1500.0, 2000, None, 0.08)
    assert capped.final_usd == pytest.approx(500) and capped.clipped_usd == pytest.approx(1500)
    # A sell against a long has room for the long and a short of the cap after it.
    assert room_under_cap(1500.0, -1, 2000) == pytest.approx(3500)


def test_the_paper_fill_pays_the_backtests_fee_per_side(tmp_path):
    desk = desk_for(tmp_path, slippage_bps=5, fees_bps=10)
    answer = desk.execute(order(qty_usd=1000, confidence=1.0))
    fill = answer["fill"]
    assert fill["price"] == pytest.approx(100 * 1.0005) and fill["feeUsd"] == pytest.approx(1.0)
    # Two such sides are the backtest's round trip: a trade with no move loses exactly 2 x fees.
    result = backtest(np.array([0.9]), np.array([0.0]), 0.55, fees_bps=10, horizon=1, periods_per_year=8760)
    assert result.net_returns[0] == pytest.approx(-round_trip_cost(10)) == pytest.approx(-2 * fill["feeUsd"] / 1000)


def test_orders_fill_once_per_key_and_a_reused_key_with_another_body_is_409(tmp_path):
    desk = desk_for(tmp_path)
    first = desk.execute(order(idempotency_key="k1"))
    again = desk.execute(order(idempotency_key="k1"))
    assert first["ok"] and again["replayed"] and again["order"]["id"] == first["order"]["id"]
    with pytest.raises(TradeRefusal) as refused:
        desk.execute(order(idempotency_key="k1", qty_usd=999))
    assert refused.value.status == 409 and refused.value.field == "idempotencyKey"
    assert desk.ledger.read().counts_by_status()["filled"] == 1


def test_concurrent_duplicates_in_threads_fill_once(tmp_path):
    desk = desk_for(tmp_path)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: desk.execute(order(idempotency_key="same")), range(8)))
    assert len({a["order"]["id"] for a in answers}) == 1 and sum(not a["replayed"] for a in answers) == 1
    assert desk.ledger.read().counts_by_status()["filled"] == 1


def _place(folder, key, results):
    desk = desk_for(folder)
    results.put(desk.execute(order(idempotency_key=key))["order"]["id"])


def test_concurrent_duplicates_in_separate_processes_fill_once(tmp_path):
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    processes = [context.Process(target=_place, args=(tmp_path, "cross", results)) for _ in range(3)]
    for p in processes:
        p.start()
    ids = {results.get(timeout=120) for _ in processes}
    for p in processes:
        p.join(timeout=60)
    assert len(ids) == 1
    assert desk_for(tmp_path).ledger.read().counts_by_status()["filled"] == 1


def test_nothing_left_under_the_cap_is_422(tmp_path):
    desk = desk_for(tmp_path, slippage_bps=0, per_symbol_usd_cap=1000)
    desk.execute(order(qty_usd=1000, confidence=1.0))
    with pytest.raises(TradeRefusal) as refused:
        desk.execute(order(qty_usd=10))
    assert (refused.value.status, refused.value.field) == (422, "qtyUsd")


def test_confidence_below_the_threshold_is_412_with_the_threshold(tmp_path):
    with pytest.raises(TradeRefusal) as refused:
        desk_for(tmp_path).execute(order(confidence=0.55))
    assert refused.value.status == 412 and refused.value.body()["threshold"] == 0.6


def test_a_drawdown_past_the_limit_locks_until_reset(tmp_path):
    prices = FixedPrices(100.0)
    desk = desk_for(tmp_path, prices, max_drawdown_pct=10, per_symbol_usd_cap=5000)
    desk.execute(order(qty_usd=5000, confidence=1.0))
    prices.price = 70.0  # the position loses 30 %: 1,500 of 10,000
    with pytest.raises(TradeRefusal) as refused:
        desk.execute(order(symbol="ETHUSDT", qty_usd=100))
    assert refused.value.status == 423
    prices.price = 100.0  # the market recovers, the lock holds: it is latched until an admin resets it
    with pytest.raises(TradeRefusal):
        desk.execute(order(symbol="ETHUSDT", qty_usd=100))
    assert desk.portfolio()["locked"] and desk.reset("tested")["was_locked"]
    assert desk.execute(order(symbol="ETHUSDT", qty_usd=100))["ok"]


def test_an_intent_left_pending_by_a_dead_process_is_abandoned_never_filled(tmp_path):
    desk = desk_for(tmp_path)
    with desk.ledger.locked() as book:
        desk.ledger.append(
            book,
            event(
                "order",
                order_id="o1",
                idempotency_key="lost",
                body_sha256=order().digest("paper", None),
                status="pending",
                symbol="BTCUSDT",
                side="buy",
                mode="paper",
                confidence=0.9,
                requested_usd=1000.0,
                sized_usd=900.0,
                clipped_usd=0.0,
            ),
        )
    assert desk.recover() == 1
    replay = desk.execute(order(idempotency_key="lost"))
    assert replay["replayed"] and replay["order"]["status"] == "abandoned" and replay["fill"] is None
    assert desk.ledger.read().counts_by_status() == {"filled": 0, "abandoned": 1, "pending": 0}


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"symbol": "DOGEUSDT"}, "symbol"),
        ({"side": "hold"}, "side"),
        ({"qty_usd": 0.0}, "qtyUsd"),
        ({"qty_usd": -5.0}, "qtyUsd"),
        ({"confidence": 1.5}, "confidence"),
        ({"idempotency_key": ""}, "idempotencyKey"),
        ({"price": 100.0}, "price"),  # not accepted unless ITFF_ACCEPT_REQUEST_PRICE
        ({"mode": "live"}, "mode"),
        ({"bar_time": "2024-09-30T23:30:00Z"}, "barTime"),
    ],
)
def test_bad_input_is_400_naming_the_field(tmp_path, fields, field):
    with pytest.raises(TradeRefusal) as refused:
        desk_for(tmp_path).execute(order(**fields))
    assert (refused.value.status, refused.value.field) == (400, field)
    if field == "mode":
        assert "no live broker adapter" in str(refused.value)


def test_the_portfolio_marks_positions_and_reports_exposure(tmp_path):
    prices = FixedPrices(100.0)
    desk = desk_for(tmp_path, prices, slippage_bps=0, fees_bps=0)
    desk.execute(order(qty_usd=1000, confidence=1.0))
    prices.price = 110.0
    book = desk.portfolio()
    assert book["exposure"] == {"BTCUSDT": pytest.approx(1100)}
    assert book["equity"] == pytest.approx(10_100) and book["drawdown"] == 0
    assert isinstance(datetime.fromisoformat(book["positions"][0]["mark_bar"]), datetime)


class LockWatchingPrices(FixedPrices):
    """FixedPrices that note, on every lake read, whether the desk's ledger lock is held at that moment."""

    def __init__(self) -> None:
        super().__init__()
        self.desk: OrderDesk | None = None
        self.under_lock: list[bool] = []

    def _read(self):
        self.under_lock.append(self.desk.ledger._threads.locked())

    def mark(self, symbol, as_of=None):
        self._read()
        return super().mark(symbol, as_of)

    def fill_reference(self, symbol, decided_at):
        self._read()
        return super().fill_reference(symbol, decided_at)

    def annualised_vol(self, symbol, as_of=None):
        self._read()
        return super().annualised_vol(symbol, as_of)


def test_the_lake_is_read_before_the_ledger_lock_is_taken(tmp_path):
    """Another worker's order waits on the lock: it must not also wait on this order's lake reads."""
    prices = LockWatchingPrices()
    desk = prices.desk = desk_for(tmp_path, prices)
    desk.execute(order(idempotency_key="a"))
    desk.execute(order(idempotency_key="b", symbol="ETHUSDT"))  # with a position held: its mark is read too
    desk.reset("test")
    assert prices.under_lock and not any(prices.under_lock)


def test_a_lake_that_stopped_long_ago_is_read_from_its_newest_month_only(tmp_path, monkeypatch):
    from itff_platform.lake.delta import replace_partitions
    from itff_platform.lake.layers import LakeTables
    from itff_platform.trading import market

    settings = Settings(home=tmp_path)
    stamps = [utc(2024, 1, 31, 22), utc(2024, 1, 31, 23), utc(2024, 2, 1, 0), utc(2024, 2, 1, 1)]
    frame = pl.DataFrame(
        {
            "interval": settings.interval,
            "symbol": "BTCUSDT",
            "month": [t.date().replace(day=1) for t in stamps],
            "timestamp": stamps,
            "open": [1.0, 2.0, 3.0, 4.0],
            "close": [1.5, 2.5, 3.5, 4.5],
            "realized_vol": [0.01, 0.01, 0.02, 0.02],
        }
    )
    path = LakeTables.under(settings).silver
    replace_partitions(path, frame, settings.interval, "BTCUSDT", sorted(set(frame["month"])))
    reads = []
    real = market.read_rows
    monkeypatch.setattr(market, "read_rows", lambda *a: reads.append(a[3]) or real(*a))
    quote = market.LakePrices(settings).mark("BTCUSDT", utc(2024, 9, 30))
    assert quote.price == 4.5 and quote.bar_time == utc(2024, 2, 1, 1)
    assert None not in reads and min(reads) == utc(2024, 2, 1)  # never the whole history


def test_a_key_replays_whatever_the_case_of_the_side_or_an_explicit_default_mode(tmp_path):
    desk = desk_for(tmp_path)
    first = desk.execute(order(idempotency_key="k", side="buy"))
    assert desk.execute(order(idempotency_key="k", side="BUY"))["order"]["id"] == first["order"]["id"]
    assert desk.execute(order(idempotency_key="k", mode="paper"))["replayed"]
    assert desk.execute(order(idempotency_key="k", qty_usd=1000))["replayed"]  # 1000 and 1000.0 alike
    assert desk.ledger.read().counts_by_status()["filled"] == 1


def test_the_starting_cash_is_the_ledgers_first_event_not_the_current_setting(tmp_path):
    desk = desk_for(tmp_path, paper_cash=10_000, slippage_bps=0, fees_bps=0)
    desk.execute(order(qty_usd=1000, confidence=1.0))
    book = desk.ledger.read()
    assert book.events.sort("seq")["kind"][0] == "open" and book.events["cash_after"][0] == 10_000
    # ITFF_PAPER_CASH changed afterwards: the account's history is what was recorded.
    later = desk_for(tmp_path, paper_cash=50_000, slippage_bps=0, fees_bps=0)
    assert later.portfolio()["cash"] == pytest.approx(9_000)


def test_an_orders_bar_time_follows_the_services_bar_time_rule(tmp_path):
    from itff_platform.serving.online import RequestError, parse_bar_time

    desk = desk_for(tmp_path)
    now = datetime.now(UTC)
    next_open = datetime.fromtimestamp((now.timestamp() // 3600 + 1) * 3600, UTC)  # within one bar of now
    for value in ("2024-09-30T23:00:00", next_open.isoformat(), "2024-09-30T23:30:00Z", "soon"):
        try:
            expected = parse_bar_time(value, desk.settings)
        except RequestError as error:
            with pytest.raises(TradeRefusal) as refused:
                desk.execute(order(bar_time=value))
            assert refused.value.field == "barTime" and str(refused.value) == str(error).replace("bar_time", "barTime")
        else:
            assert desk.execute(order(bar_time=value, qty_usd=10.0))["ok"], expected


def test_a_ledger_commit_is_fsynced_before_it_returns(tmp_path, monkeypatch):
    import os

    desk = desk_for(tmp_path)
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real(fd))
    desk.execute(order(idempotency_key="durable"))
    log = desk.ledger.table / "_delta_log"
    newest = max(log.glob("*.json"))
    assert str(newest) in synced and str(log) in synced
    data = [p for p in synced if p.endswith(".parquet")]
    assert data and all(p.startswith(str(desk.ledger.table)) for p in data)


class PricesThatFell(FixedPrices):
    """100 through 2024-05-01 23:00's close, 50 on every bar after (today's close too)."""

    def mark(self, symbol, as_of=None):
        then = as_of is not None and as_of <= utc(2024, 5, 2)
        return Quote(100.0 if then else 50.0, utc(2024, 5, 1, 23) if then else utc(2024, 9, 30, 23), "newest_close")


def test_an_order_for_a_past_bar_is_judged_on_the_closes_known_at_that_bar(tmp_path):
    """A replay orders bar by bar in the past: marking its account at today's close (after a fall) was look-ahead
    that locked it at 423 on the next old bar, and recorded today's equity for then."""
    desk = desk_for(tmp_path, PricesThatFell(), max_drawdown_pct=10, per_symbol_usd_cap=5000)
    desk.execute(order(qty_usd=5000, confidence=1.0, bar_time="2024-05-01T22:00:00Z"))
    filled = desk.execute(order(symbol="ETHUSDT", qty_usd=100, bar_time="2024-05-01T23:00:00Z"))
    assert filled["ok"] and not desk.ledger.read().locked
    assert desk.ledger.read().fills()["equity_after"][-1] == pytest.approx(10_000, rel=0.01)
