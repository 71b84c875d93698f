"""POST /trade/execute, GET /portfolio and POST /risk/reset on a real `bentoml serve` (2 workers) over a real lake:
the refusals (401, 409, 412, 423, 429, 400 naming the field), the cap, idempotency under concurrent duplicates,
and a kill -9 between an order's durable intent and its acknowledgement."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from itff_platform.lake.delta import read_rows
from itff_platform.lake.layers import LakeTables
from itff_platform.trading.desk import OrderDesk
from itff_platform_tests.faults.conftest import ADMIN, TOKEN, build_lake, kill9, metric_lines, serve, worker_pids

LIMITS = {
    "ITFF_SERVE_WORKERS": "2",
    "ITFF_ACCEPT_REQUEST_PRICE": "true",
    "ITFF_PER_SYMBOL_USD_CAP": "3000",
    "ITFF_PAPER_CASH": "10000",
    "ITFF_MAX_DRAWDOWN_PCT": "10",
    "ITFF_CONFIDENCE_THRESHOLD": "0.6",
    "ITFF_TARGET_ANN_VOL": "100",  # so the volatility scale is 1 and the sizes below are confidence x qtyUsd
}


@pytest.fixture(scope="module")
def lake_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trading")
    settings = build_lake(folder)
    close = float(read_rows(LakeTables.under(settings).silver, settings.interval, "PROMOUSDT")["close"][-1])
    return folder, settings, close


@pytest.fixture(scope="module")
def trading(lake_folder):
    folder, settings, close = lake_folder
    process, url, log_file = serve(folder, **LIMITS)
    yield url, settings, close
    process.terminate()
    process.wait(timeout=60)
    log_file.close()


def order(url, token=TOKEN, **fields):
    body = {"symbol": "PROMOUSDT", "side": "buy", "qtyUsd": 100, "confidence": 0.9, **fields}
    return httpx.post(f"{url}/trade/execute", json=body, headers={"X-API-Token": token}, timeout=60)


def ledger(settings):
    return OrderDesk(settings).ledger.read()


def test_no_token_is_401_and_the_reset_takes_only_the_admin_token(trading):
    url, _, _ = trading
    assert httpx.post(f"{url}/trade/execute", json={}, timeout=10).status_code == 401
    assert httpx.get(f"{url}/portfolio", timeout=10).status_code == 401
    assert httpx.post(f"{url}/risk/reset", json={}, headers={"X-API-Token": TOKEN}, timeout=10).status_code == 401


def test_confidence_below_the_threshold_is_412_with_the_threshold(trading):
    url, _, _ = trading
    answer = order(url, confidence=0.55)
    assert answer.status_code == 412 and answer.json()["threshold"] == 0.6 and answer.json()["field"] == "confidence"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"symbol": "NOPEUSDT"}, "symbol"),
        ({"qtyUsd": 0}, "qtyUsd"),
        ({"qtyUsd": -10}, "qtyUsd"),
        ({"side": "hold"}, "side"),
        ({"confidence": 1.5}, "confidence"),
        ({"mode": "live"}, "mode"),
    ],
)
def test_bad_input_is_400_naming_the_field(trading, fields, field):
    answer = order(trading[0], **fields)
    assert answer.status_code == 400 and answer.json()["field"] == field, answer.text


def test_concurrent_duplicates_fill_once_across_both_workers(trading):
    url, settings, close = trading
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda _: order(url, idempotencyKey="dup-1", price=close), range(24)))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
    bodies = [a.json() for a in answers]
    assert len({b["order"]["id"] for b in bodies}) == 1 and sum(not b["replayed"] for b in bodies) == 1
    fills = ledger(settings).fills().filter(idempotency_key="dup-1")
    assert fills.height == 1
    reused = order(url, idempotencyKey="dup-1", qtyUsd=101, price=close)
    assert reused.status_code == 409 and reused.json()["field"] == "idempotencyKey"


def test_an_order_over_the_cap_is_clipped_and_says_by_how_much(trading):
    url, _, close = trading
    book = httpx.get(f"{url}/portfolio", headers={"X-API-Token": TOKEN}, timeout=30).json()
    held = book["exposure"].get("PROMOUSDT", 0.0)
    answer = order(url, qtyUsd=5000, confidence=1.0, price=close, idempotencyKey="cap-1").json()
    assert answer["order"]["qtyUsd"] == pytest.approx(3000 - held, rel=1e-6)
    assert answer["order"]["clippedUsd"] == pytest.approx(5000 - (3000 - held), rel=1e-6)
    assert "clipped at the cap" in answer["message"]
    # What is left under the cap (the slippage made the position worth a little less than it cost) is all it gets.
    rest = order(url, qtyUsd=100, price=close).json()["order"]
    assert rest["qtyUsd"] < 2 and rest["clippedUsd"] == pytest.approx(90 - rest["qtyUsd"])
    # Selling against the long is never clipped by the cap: it reduces the exposure.
    assert order(url, side="sell", qtyUsd=3000, confidence=1.0, price=close).json()["order"]["clippedUsd"] == 0


def test_a_drawdown_beyond_the_limit_is_423_until_an_admin_resets_it(trading):
    url, _, close = trading
    # Bought at twice the lake's close, marked at the close: half the 3,000 is gone, 15 % of the account.
    order(url, qtyUsd=3000, confidence=1.0, price=2 * close, idempotencyKey="loss-1")
    locked = order(url, price=close)
    assert locked.status_code == 423 and locked.json()["locked"] is True
    health = httpx.get(f"{url}/readyz", headers={"X-API-Token": TOKEN}, timeout=30).json()
    assert health["risk"]["locked"] is True and health["risk"]["drawdown"] > 0.10
    assert health["risk"]["config"]["max_drawdown_pct"] == 10
    book = httpx.get(f"{url}/portfolio", headers={"X-API-Token": TOKEN}, timeout=30).json()
    assert book["locked"] and book["drawdown"] > 0.10 and book["positions"][0]["mark"] == pytest.approx(close)
    assert metric_lines(url, "risk_locked") == ["risk_locked 1.0"]
    reset = httpx.post(f"{url}/risk/reset", json={"reason": "test"}, headers={"X-API-Token": ADMIN}, timeout=30)
    assert reset.status_code == 200 and reset.json()["was_locked"] is True
    assert order(url, side="sell", price=close).status_code == 200
    assert any(line.startswith("itff_paper_equity_usd") for line in metric_lines(url, "itff_paper_equity_usd"))
    assert metric_lines(url, "risk_locked") == ["risk_locked 0.0"]


def test_past_the_rate_limit_orders_get_429(lake_folder):
    folder = lake_folder[0]
    process, url, log_file = serve(
        folder, **{**LIMITS, "ITFF_SERVE_WORKERS": "1", "ITFF_RATE_LIMIT_BURST": "5", "ITFF_RATE_LIMIT_PER_MINUTE": "5"}
    )
    try:
        codes = [order(url, symbol="NOPEUSDT").status_code for _ in range(8)]
        assert codes[:5] == [400] * 5 and 429 in codes[5:]
    finally:
        process.terminate()
        process.wait(timeout=60)
        log_file.close()


@pytest.mark.timeout(400)
def test_a_kill_between_the_intent_and_the_ack_leaves_no_fill_and_each_acked_order_once(lake_folder):
    folder, settings, close = lake_folder
    env = {**LIMITS, "ITFF_SERVE_WORKERS": "1", "ITFF_TEST_PAUSE_AFTER_INTENT_S": "4"}
    process, url, log_file = serve(folder, **env)
    acked = order(url, idempotencyKey="acked-1", price=close)
    assert acked.status_code == 200
    lost: dict = {}
    sender = threading.Thread(
        target=lambda: lost.update(answer=_quietly(lambda: order(url, idempotencyKey="killed-1", price=close)))
    )
    sender.start()
    deadline = time.time() + 30
    while time.time() < deadline and ledger(settings).pending().is_empty():
        time.sleep(0.1)
    assert not ledger(settings).pending().is_empty(), "the intent was never written"
    kill9(*worker_pids(process.pid), process.pid)  # between the durable intent and the fill
    process.wait(timeout=30)
    log_file.close()
    sender.join(timeout=60)
    assert not isinstance(lost.get("answer"), httpx.Response) or lost["answer"].status_code != 200

    process, url, log_file = serve(folder, **{**env, "ITFF_TEST_PAUSE_AFTER_INTENT_S": "0"})
    try:
        book = ledger(settings)
        assert book.pending().is_empty()  # the restart abandoned it
        assert book.fills().filter(idempotency_key="killed-1").is_empty()
        assert book.fills().filter(idempotency_key="acked-1").height == 1
        again = order(url, idempotencyKey="acked-1", price=close).json()
        assert again["replayed"] and again["order"]["id"] == acked.json()["order"]["id"]
        retried = order(url, idempotencyKey="killed-1", price=close).json()
        assert retried["order"]["status"] == "abandoned" and retried["fill"] is None and not retried["ok"]
        assert ledger(settings).fills().filter(idempotency_key="killed-1").is_empty()
    finally:
        process.terminate()
        process.wait(timeout=60)
        log_file.close()


def _quietly(call):
    try:
        return call()
    except httpx.HTTPError as error:
        return error
