"""Issue 10, service items, against a real two-worker `bentoml serve` over a real lake and MLflow registry:
hostile and malformed input gets a 4xx naming the field and the rule (never a 500), the online checks are the
lake's, TradingView alerts are signed over their whole body and answered once, the regime gauge is the lake's,
metrics survive a second service, failed authentication is budgeted per address, and client errors are quiet."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import polars as pl
import pytest

from itff_platform.features.silver import feature_columns
from itff_platform.local_http import answers
from itff_platform.rules import REGIMES
from itff_platform.serving.guard import body_signature
from itff_platform_tests.conftest import free_port
from itff_platform_tests.faults.conftest import (
    ADMIN,
    QUARANTINED_BAR,
    TOKEN,
    kill9,
    metric_lines,
    serve,
    wait_for_workers,
    worker_pids,
)

SECRET = "fault-secret"
SERVER: dict = {}
ROOT = Path(__file__).resolve().parents[2]


# The service's failed-authentication budget, split between its 2 workers. The module's own negative tests (forged
# TradingView signatures, wrong tokens) spend up to ~8 of it within a minute; a budget of 10 (5 a worker) let them
# exhaust one worker when most landed there, so a later test's right token got 429 on a fast machine.
AUTH_BURST = 40


@pytest.fixture(scope="module")
def service(lake):
    folder, settings, silver = lake
    process, url, log_file = serve(
        folder,
        ITFF_SERVE_WORKERS="2",
        ITFF_TRADINGVIEW_SECRET=SECRET,
        ITFF_TRADINGVIEW_STALE="flag",
        ITFF_AUTH_FAILURE_BURST=str(AUTH_BURST),
        ITFF_AUTH_FAILURES_PER_MINUTE="2",
    )
    SERVER.update(process=process, log=folder / "bentoml-serve.log")
    yield url, settings, silver
    process.terminate()
    process.wait(timeout=60)
    log_file.close()


def post(url, path, body, token=TOKEN, **kwargs):
    return httpx.post(f"{url}{path}", json=body, headers={"X-API-Token": token}, timeout=60, **kwargs)


def row_of(silver: pl.DataFrame, settings, i: int = -1) -> list[float]:
    return list(silver.select(feature_columns(settings)).row(i))


def candles_of(silver: pl.DataFrame, n: int = 800, end: int | None = None) -> list[dict]:
    part = silver.select("timestamp", "open", "high", "low", "close", "volume")
    part = part.slice(0, end) if end is not None else part
    return [dict(zip(part.columns, (r[0].isoformat(), *r[1:]))) for r in part.tail(n).iter_rows()]


def server_log() -> str:
    return SERVER["log"].read_text()


# --- 1. no 500s -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/predict", "/predict_batch", "/consensus"])
@pytest.mark.parametrize("value", [1e39, -1e39, 1e300])
def test_finite_values_beyond_float32_get_a_400_naming_the_field(service, path, value):
    url, settings, silver = service
    row = row_of(silver, settings)
    row[0] = value
    body = (
        {"symbol": "PROMOUSDT", "rows": [row]} if path == "/predict_batch" else {"symbol": "PROMOUSDT", "features": row}
    )
    answer = post(url, path, body)
    assert answer.status_code == 400, answer.text
    assert "beyond the float32 range" in answer.json()["error"] and "log_return_1" in answer.json()["error"]


@pytest.mark.parametrize("path", ["/predict", "/predict_batch", "/consensus", "/tradingview", "/healthz", "/readyz"])
@pytest.mark.parametrize("media", ["multipart/form-data", "application/x-www-form-urlencoded"])
def test_form_bodies_without_a_boundary_get_415_not_500(service, path, media):
    url, _, _ = service
    answer = httpx.post(
        f"{url}{path}", content=b"x=1", headers={"X-API-Token": TOKEN, "Content-Type": media}, timeout=30
    )
    assert answer.status_code == 415 and answer.json()["field"] == "Content-Type", answer.text


# --- 2. the lake's rules on request candles -------------------------------------------------------------------


def test_candles_that_break_a_lake_rule_are_refused_by_that_rule(service):
    url, _, silver = service
    candles = candles_of(silver)
    broken = [dict(c) for c in candles]
    broken[700]["high"] = broken[700]["low"] * 0.99  # high < low: the lake quarantines such a row
    answer = post(url, "/predict", {"symbol": "PROMOUSDT", "candles": broken})
    assert answer.status_code == 400 and answer.json()["error"].startswith("candles[700].high: must be >= low"), (
        answer.text
    )
    assert post(url, "/consensus", {"symbol": "PROMOUSDT", "candles": broken}).status_code == 400
    zero = [dict(c) for c in candles]
    zero[5]["volume"] = 0.0
    assert "candles[5].volume: must be > 0" in post(url, "/predict", {"symbol": "PROMOUSDT", "candles": zero}).text


@pytest.mark.parametrize(
    "step, message",
    [
        (timedelta(minutes=1), "must fall on a 3600s bar boundary"),  # the lake's rule catches the first off-hour bar
        (timedelta(days=1), "the candles are 1 d apart; this model is trained on 1h bars"),
    ],
)
def test_candles_at_another_interval_than_the_models_are_refused(service, step, message):
    url, _, silver = service
    candles = candles_of(silver)
    start = datetime.fromisoformat(candles[0]["timestamp"])
    respaced = [c | {"timestamp": (start + i * step).isoformat()} for i, c in enumerate(candles)]
    answer = post(url, "/predict", {"symbol": "PROMOUSDT", "candles": respaced})
    assert answer.status_code == 400 and message in answer.text, answer.text


@pytest.mark.parametrize("value", [True, False, "1.5", None])
def test_a_feature_value_that_is_not_a_number_is_refused(service, value):
    url, settings, silver = service
    row = row_of(silver, settings)
    named = dict(zip(feature_columns(settings), row)) | {"rsi": value}
    for body in ({"symbol": "PROMOUSDT", "features": named}, {"symbol": "PROMOUSDT", "features": [value, *row[1:]]}):
        answer = post(url, "/predict", body)
        assert answer.status_code == 400, answer.text
    batch = post(url, "/predict_batch", {"symbol": "PROMOUSDT", "rows": [[value, *row[1:]]]})
    assert batch.status_code == 400 and "rows" in batch.text, batch.text


# --- 3. TradingView ---------------------------------------------------------------------------------------------


def alert_for(silver: pl.DataFrame, i: int = -1, **change) -> dict:
    bar = silver.row(i, named=True)
    return {
        "ticker": "BINANCE:PROMOUSDT",
        "close": bar["close"],
        "time": bar["timestamp"].strftime("%Y-%m-%dT%H:%M:%SZ"),
        "sent_at": time.time(),
        **change,
    }


def send(url: str, alert: dict, secret: str = SECRET, signature: str | None = None, body: bytes | None = None):
    body = body if body is not None else json.dumps(alert).encode()
    headers = {"Content-Type": "application/json", "X-Signature": signature or body_signature(secret, body)}
    return httpx.post(f"{url}/tradingview?token={TOKEN}", content=body, headers=headers, timeout=60)


def test_a_tradingview_signature_covers_the_whole_body_and_is_accepted_once(service):
    url, _, silver = service
    alert = alert_for(silver)
    body = json.dumps(alert).encode()
    signature = body_signature(SECRET, body)
    first = send(url, alert, body=body, signature=signature)
    assert first.status_code == 200 and first.json()["stale"] is False and first.json()["age_bars"] == 0, first.text
    replay = send(url, alert, body=body, signature=signature)
    assert replay.status_code == 409 and replay.json()["field"] == "signature"
    # The captured signature on the same alert with other candles, or another target: not this body's signature.
    for changed in (alert | {"candles": candles_of(silver)}, alert | {"target": "level_up"}, alert | {"close": 1.0}):
        forged = send(url, changed, signature=signature)
        assert forged.status_code == 401 and "raw body" in forged.text, forged.text
    assert send(url, alert_for(silver), secret="not-the-secret").status_code == 401
    old = send(url, alert_for(silver, sent_at=time.time() - 3600))
    assert old.status_code == 400 and old.json()["field"] == "sent_at", old.text
    unsent = {k: v for k, v in alert_for(silver).items() if k != "sent_at"}
    assert send(url, unsent).status_code == 400


def test_an_alert_after_the_lakes_newest_bar_is_flagged_stale_with_its_age_in_bars(service):
    """This service runs with ITFF_TRADINGVIEW_STALE=flag (the default, refuse, is tested in test_live_evaluation)."""
    url, _, silver = service
    newest = silver["timestamp"][-1]
    later = alert_for(silver, time=(newest + timedelta(hours=47)).strftime("%Y-%m-%dT%H:%M:%SZ"))
    answer = send(url, later)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["stale"] is True and body["age_bars"] == 47 and body["bar_time"] == newest.isoformat()


@pytest.mark.parametrize("close", [99999.0, -1.0, 0.0])
def test_an_alert_close_far_from_the_bar_close_is_refused(service, close):
    url, _, silver = service
    answer = send(url, alert_for(silver, close=close))
    assert answer.status_code == 400 and answer.json()["field"] == "close", answer.text


def test_a_quarantined_bar_is_refused_not_answered_from_the_bar_before(service):
    url, _settings, silver = service
    quarantined = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(hours=QUARANTINED_BAR)
    assert quarantined not in silver["timestamp"].to_list()
    before = silver.filter(pl.col("timestamp") < quarantined).row(-1, named=True)
    answer = send(url, alert_for(silver, close=before["close"], time=quarantined.strftime("%Y-%m-%dT%H:%M:%SZ")))
    assert answer.status_code == 400 and "quarantined" in answer.text and "high: must be >= low" in answer.text, (
        answer.text
    )


@pytest.mark.parametrize(
    "ticker, served",
    [
        ("BINANCE:PROMOUSDT", True),
        ("PROMOUSDT", True),
        ("BYBIT:PROMOUSDT.P", False),
        ("BINANCE:PROMOUSDT.P", False),
        ("PROMOUSDTPERP", False),
        ("COINBASE:PROMOUSDT", False),
        ("NOWHERE:PROMOUSDT", False),
    ],
)
def test_exchange_prefixes_are_mapped_explicitly(service, ticker, served):
    url, _, silver = service
    answer = send(url, alert_for(silver, ticker=ticker))
    assert (answer.status_code == 200) == served, answer.text
    if not served:
        assert answer.status_code == 400 and answer.json()["field"] == "ticker"


# --- 4. market_regime_state -------------------------------------------------------------------------------------


def regime_series(url: str) -> dict[str, float]:
    lines = metric_lines(url, "market_regime_state")
    assert not any("pid=" in line for line in lines), lines  # one value per symbol and regime, not one per worker
    series = {re.search(r'regime="([^"]+)"', line).group(1): float(line.rsplit(" ", 1)[1]) for line in lines}
    assert len(lines) == len(series), lines
    return series


def test_market_regime_state_is_the_lakes_newest_bar_and_no_client_can_pin_it(service):
    url, _, silver = service
    newest = silver.row(-1, named=True)["regime"]
    expected = {name: float(name == newest) for name in REGIMES}
    assert regime_series(url) == expected
    # Candles dated 2099 are refused; a window of the past (another regime at its end) is answered, not reported.
    future = [c | {"timestamp": c["timestamp"].replace("2024-", "2099-")} for c in candles_of(silver)]
    refused = post(url, "/predict", {"symbol": "PROMOUSDT", "candles": future})
    assert refused.status_code == 400 and "is in the future" in refused.text, refused.text
    other = next(i for i in range(silver.height - 1, 800, -1) if silver["regime"][i] not in (newest, "unknown"))
    for _ in range(6):  # fresh connections: both workers see it
        past = post(url, "/predict", {"symbol": "PROMOUSDT", "candles": candles_of(silver, end=other + 1)})
        assert past.status_code == 200 and past.json()["regime"] == silver["regime"][other], past.text
    assert regime_series(url) == expected


def test_a_killed_worker_leaves_no_stale_series(service):
    url, _, _ = service
    arbiter = SERVER["process"].pid
    victim = wait_for_workers(arbiter, 2)[0]
    kill9(victim)
    deadline = time.time() + 180
    while time.time() < deadline:
        pids = worker_pids(arbiter)
        if len(pids) == 2 and victim not in pids:
            break  # the arbiter has started a replacement
        time.sleep(0.5)
    else:
        pytest.fail(f"no replacement worker: {worker_pids(arbiter)}")
    time.sleep(20)  # the replacement loads its champion and reports before it serves
    for _ in range(4):
        assert len(regime_series(url)) == len(REGIMES)
    for name in ("prediction_quality_metric", "itff_served_model_version"):
        assert not any("pid=" in line for line in metric_lines(url, name))


# --- 6. prediction_quality_metric ---------------------------------------------------------------------------------


def test_prediction_quality_metric_has_a_no_data_series_from_startup_until_an_evaluation(service):
    from itff_platform.monitoring.outcomes import summary_path

    url, settings, _ = service
    assert metric_lines(url, "prediction_quality_metric") == [
        'prediction_quality_metric{metric="has_data",symbol="PROMOUSDT",target="direction"} 0.0'
    ]
    summary = summary_path(settings)
    summary.parent.mkdir(parents=True, exist_ok=True)
    summary.write_text(
        json.dumps([{"symbol": "PROMOUSDT", "target": "direction", "metric": "log_loss", "value": 0.69}])
    )
    try:
        assert post(url, "/admin/reload", {}, token=ADMIN).status_code == 200  # one worker; the other on its next poll
        lines = set(metric_lines(url, "prediction_quality_metric"))
        assert 'prediction_quality_metric{metric="log_loss",symbol="PROMOUSDT",target="direction"} 0.69' in lines
        assert 'prediction_quality_metric{metric="has_data",symbol="PROMOUSDT",target="direction"} 1.0' in lines
    finally:
        summary.unlink()


# --- 10. noise and exposure ---------------------------------------------------------------------------------------


def test_readyz_details_need_a_token_and_the_probe_says_nothing(service):
    url, _, _ = service
    probe = httpx.get(f"{url}/readyz", timeout=10)
    assert probe.status_code == 200 and "itff-" not in probe.text
    assert httpx.get(f"{url}/readyz", headers={"X-API-Token": "guess"}, timeout=10).status_code == 401
    details = httpx.get(f"{url}/readyz", headers={"X-API-Token": TOKEN}, timeout=10)
    assert details.status_code == 200 and "itff-PROMOUSDT-direction" in details.json()["models"]


def test_only_the_public_set_answers_without_a_token(service):
    """Deny by default: a path the guard does not list, such as BentoML's own /schema.json, needs a token."""
    url, _, _ = service
    schema = httpx.get(f"{url}/schema.json", timeout=10)
    assert schema.status_code == 401 and schema.json()["field"] == "X-API-Token", schema.text
    assert httpx.get(f"{url}/schema.json", headers={"X-API-Token": TOKEN}, timeout=10).status_code == 200
    for path in ("/", "/docs.json", "/healthz", "/livez", "/readyz", "/metrics", "/static_content/swagger-ui.css"):
        assert httpx.get(f"{url}{path}", timeout=30).status_code == 200, path


def log_after(before: int, text: str, count: int) -> str:
    """The server log written since offset `before`, once `text` shows `count` times in it (or after 15 s): the
    workers' lines reach the file asynchronously, so a fixed sleep is flaky on a loaded machine. Half a second more
    lets a stray traceback after them show too."""
    deadline = time.time() + 15
    while server_log()[before:].count(text) < count and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    return server_log()[before:]


def test_a_client_error_is_one_info_line_not_an_error_traceback(service):
    url, _, _ = service
    before = len(server_log())
    assert post(url, "/predict", {"symbol": "DOGEUSDT", "features": [1.0]}).status_code == 400
    assert post(url, "/predict", {"symbol": 17}).status_code == 400  # pydantic's refusal, inside BentoML
    assert post(url, "/predict", {"symbol": "PROMOUSDT", "features": {"rsi": True}}).status_code == 400
    new = log_after(before, "client error 400", 3)
    lines = [line for line in new.splitlines() if line.strip()]
    assert "Traceback" not in new and "[ERROR]" not in new, new[-3000:]
    refused = [line for line in lines if "client error 400" in line]
    assert len(refused) == 3 and all("[INFO]" in line for line in refused), lines
    assert "symbol: 'DOGEUSDT' is not served" in refused[0] and "symbol: Input should be a valid string" in refused[1]


# --- 5. a second service does not wipe the first one's metrics -----------------------------------------------------


def make_serve(folder: Path, port: int, log_path: Path) -> subprocess.Popen:
    """`make serve`, as an operator runs it (the install step marked done: the venv is this one)."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "BENTOML_"))},
        "HOME": str(folder),
        "ITFF_HOME": str(folder),
        "PORT": str(port),
        "ITFF_API_TOKENS": json.dumps([TOKEN]),
        "ITFF_SYMBOLS": '["PROMOUSDT"]',
        "ITFF_TARGETS": '["direction"]',
        "ITFF_RELOAD_INTERVAL_S": "0",
        "ITFF_SERVE_WORKERS": "1",
        "ITFF_SOURCE": "files",
    }
    return subprocess.Popen(
        ["make", "-s", "-o", "install", "serve", f"BIN={Path(sys.executable).parent}"],
        cwd=ROOT,
        env=env,
        stdout=open(log_path, "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_ready(
    url: str, process: subprocess.Popen, log_path: Path, probe: str = "/readyz", what: str = "make serve"
) -> None:
    """Until GET url+probe answers 200; fails with the log's tail if the process exits or 180 s pass first."""
    if not answers(f"{url}{probe}", process, timeout_s=180, interval_s=1):
        pytest.fail(f"{what} did not start:\n{log_path.read_text()[-3000:]}")


@pytest.mark.timeout(600)
def test_a_second_make_serve_does_not_wipe_the_first_ones_metrics(lake):
    folder, settings, silver = lake
    ports = [free_port(), free_port()]
    processes = []
    try:
        for port in ports:
            log_path = folder / f"make-serve-{port}.log"
            processes.append(make_serve(folder, port, log_path))
            wait_ready(f"http://127.0.0.1:{port}", processes[-1], log_path)
            if len(processes) == 1:
                for _ in range(5):
                    assert (
                        post(
                            f"http://127.0.0.1:{port}",
                            "/predict",
                            {"symbol": "PROMOUSDT", "features": row_of(silver, settings)},
                        ).status_code
                        == 200
                    )
                assert metric_lines(f"http://127.0.0.1:{port}", "itff_predictions_total")
        first = metric_lines(f"http://127.0.0.1:{ports[0]}", "itff_predictions_total")
        assert first and sum(float(line.rsplit(" ", 1)[1]) for line in first) == 5, first
        assert (folder / ".bentoml" / str(ports[0]) / "prometheus_multiproc_dir").is_dir()
        assert (folder / ".bentoml" / str(ports[1]) / "prometheus_multiproc_dir").is_dir()
    finally:
        for process in processes:
            os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            process.wait(timeout=60)


# --- 9. auth abuse (runs last: it spends 127.0.0.2's failure budget) ---------------------------------------------


def test_zz_failed_auth_is_budgeted_per_address_logged_once_per_burst_and_two_tokens_are_refused(service):
    url, settings, silver = service
    body = {"symbol": "PROMOUSDT", "features": row_of(silver, settings)}
    two = httpx.post(
        f"{url}/predict", json=body, headers=[("X-API-Token", TOKEN), ("X-API-Token", "other")], timeout=30
    )
    assert two.status_code == 400 and two.json()["field"] == "X-API-Token", two.text
    attacker = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=30)
    before = len(server_log())
    # A new connection each, so both workers get some; but how the kernel shares them out is not ours to choose
    # (one worker took most of 200 in one CI run, and the other's budget lasted into the last 20). So guessing goes
    # on until both halves are spent (AUTH_BURST 401s in all) and 20 guesses in a row got 429, 600 at most.
    guesses, codes = [f"guess-{i:04d}-secretish" for i in range(600)], []
    for guess in guesses:
        answer = attacker.post(f"{url}/predict", json=body, headers={"X-API-Token": guess, "Connection": "close"})
        codes.append(answer.status_code)
        if codes.count(401) >= AUTH_BURST and codes[-20:] == [429] * 20:
            break
    # The budget (AUTH_BURST, half per worker) refills 2/min: a few more 401s than the burst at most, then only 429.
    assert codes.count(401) <= AUTH_BURST + 2 and codes[-20:] == [429] * 20, codes
    # Spent: even the right token from that address gets 429, so a guess cannot be confirmed by the answer.
    for _ in range(4):
        right = attacker.post(f"{url}/predict", json=body, headers={"X-API-Token": TOKEN, "Connection": "close"})
        assert right.status_code == 429 and int(right.headers["retry-after"]) >= 1
    assert post(url, "/predict", body).status_code == 200  # another address is not affected
    new = log_after(before, "failed authentications", 1)
    warnings = [line for line in new.splitlines() if "[WARNING]" in line and "failed authentications" in line]
    assert 1 <= len(warnings) <= 2 and all("127.0.0.2" in line for line in warnings), warnings  # one per worker at most
    assert not any(g in new for g in guesses) and TOKEN not in new
