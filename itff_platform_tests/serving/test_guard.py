"""The request guard on its own: a bare ASGI app behind it, driven directly."""

import asyncio
import json

from itff_platform.serving.guard import GuardMiddleware, TokenBuckets, token_matches


async def echo_app(scope, receive, send):
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def call(path="/predict", headers=(), chunks=(b"{}",), query=b""):
    guard = GuardMiddleware(echo_app, tokens=["good"], admin_token="admin", per_minute=60, burst=2, max_bytes=100)
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "path": path,
        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        "query_string": query,
    }
    asyncio.run(guard(scope, receive, send))
    return sent[0]["status"], sent[1]["body"]


def test_tokens_are_required_on_prediction_paths():
    assert call(headers=[("x-api-token", "good")])[0] == 200
    assert call()[0] == 401 and call(headers=[("x-api-token", "bad")])[0] == 401
    assert call(path="/healthz")[0] == 200
    assert call(path="/tradingview", query=b"token=good")[0] == 200  # webhook URLs carry the token
    assert call(path="/admin/reload", headers=[("x-api-token", "good")])[0] == 401  # prediction tokens are not admin
    assert call(path="/admin/reload", headers=[("x-api-token", "admin")])[0] == 200


def test_bodies_over_the_limit_get_413_with_or_without_content_length():
    assert call(headers=[("x-api-token", "good"), ("content-length", "500")])[0] == 413
    status, body = call(headers=[("x-api-token", "good")], chunks=(b"x" * 60, b"x" * 60))  # chunked
    assert status == 413 and b"exceeds the limit" in body
    status, body = call(headers=[("x-api-token", "good")], chunks=(b"a" * 30, b"b" * 30))
    assert status == 200 and body == b"a" * 30 + b"b" * 30  # replayed intact
    assert call(headers=[("x-api-token", "good"), ("content-length", "lots")])[0] == 400


def test_odd_header_bytes_are_a_4xx_not_a_crash():
    status, body = call(headers=[("x-api-token", "g\xf6od")])
    assert status == 401 and json.loads(body)["field"] == "X-API-Token"


def test_token_bucket_allows_the_burst_then_refills_at_the_rate():
    buckets = TokenBuckets(per_minute=60, burst=2)
    assert buckets.take("t", now=0) == 0 and buckets.take("t", now=0) == 0
    assert buckets.take("t", now=0) == 1.0  # one per second: wait a second
    assert buckets.take("t", now=1.0) == 0
    assert buckets.take("other", now=1.0) == 0  # per token


def test_token_comparison():
    assert token_matches("abc", ["x", "abc"]) and not token_matches("abd", ["abc"]) and not token_matches("", ["abc"])


def test_workers_split_the_token_budget_so_n_workers_never_allow_n_times_the_limit():
    guard = GuardMiddleware(
        echo_app, tokens=["good"], admin_token=None, per_minute=600, burst=60, max_bytes=100, workers=2
    )
    assert guard.buckets.burst == 30 and guard.buckets.rate * 60 == 300


def guarded(**kwargs) -> GuardMiddleware:
    options = dict(tokens=["good"], admin_token="admin", per_minute=6000, burst=100, max_bytes=10_000) | kwargs
    return GuardMiddleware(echo_app, **options)


def ask(guard, path="/predict", headers=(), body=b"{}", query=b"", client="10.0.0.1", method="POST"):
    sent = []

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "path": path,
        "method": method,
        "client": (client, 5555),
        "query_string": query,
        "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
    }
    asyncio.run(guard(scope, receive, send))
    return sent[0]["status"], json.loads(sent[1]["body"]) if sent[0]["status"] != 200 else sent[1]["body"]


def test_auth_is_deny_by_default_with_an_explicit_public_set():
    # Paths nobody listed: a new endpoint, BentoML's own /schema.json, near-misses of public paths.
    for path in ("/new_endpoint", "/schema.json", "/healthz/", "/docs.json.bak", "/static_content", "/admin"):
        status, body = ask(guarded(), path=path, method="GET")
        assert status == 401 and body["field"] == "X-API-Token", path
        assert ask(guarded(), path=path, method="GET", headers=[("x-api-token", "good")])[0] == 200, path
    for path in (
        "/",
        "/docs",
        "/docs.json",
        "/healthz",
        "/livez",
        "/readyz",
        "/metrics",
        "/static_content/swagger-ui.css",
    ):
        assert ask(guarded(), path=path, method="GET")[0] == 200, path
        assert ask(guarded(), path=path, method="HEAD")[0] == 200, path
        assert ask(guarded(), path=path, method="POST")[0] == 405, path  # public to read only


def test_two_tokens_are_refused_not_the_last_one_taken():
    status, body = ask(guarded(), headers=[("x-api-token", "bad"), ("x-api-token", "good")])
    assert status == 400 and body["field"] == "X-API-Token" and "2 times" in body["error"]
    assert ask(guarded(), path="/tradingview", headers=[("x-api-token", "good")], query=b"token=other")[0] == 400
    assert ask(guarded(), path="/tradingview", query=b"token=good&token=other")[0] == 400
    assert (
        ask(guarded(), path="/tradingview", headers=[("x-api-token", "good")], query=b"token=good")[0] == 200
    )  # the same one


def test_failed_auth_spends_a_per_address_budget_then_even_the_right_token_gets_429(caplog):
    guard = guarded(auth_failure_burst=3, auth_failures_per_minute=1)
    with caplog.at_level("INFO", logger="itff_platform.serving.guard"):
        assert [ask(guard, headers=[("x-api-token", f"guess{i}")])[0] for i in range(5)] == [401, 401, 401, 429, 429]
        status, body = ask(guard, headers=[("x-api-token", "good")])
        assert status == 429 and body["retry_after_s"] >= 1
        assert ask(guard, headers=[("x-api-token", "good")], client="10.0.0.2")[0] == 200  # per address
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "10.0.0.1" in warnings[0].getMessage()  # one line for the burst
    assert not any("guess" in r.getMessage() for r in caplog.records)  # never the token


def test_form_and_pickle_bodies_get_415_on_every_post():
    for media in ("multipart/form-data", "application/x-www-form-urlencoded", "application/vnd.bentoml+pickle"):
        for path in ("/predict", "/healthz", "/readyz"):
            status, body = ask(guarded(), path=path, headers=[("x-api-token", "good"), ("content-type", media)])
            assert status == 415 and body["field"] == "Content-Type"
    assert ask(guarded(), headers=[("x-api-token", "good"), ("content-type", "text/plain")])[0] == 200  # TradingView's


def test_get_readyz_with_a_token_lists_the_models_and_without_one_is_the_bare_probe():
    async def readiness():
        return False, {"ready": False, "models": {"itff-X-direction": {"problem": "no champion"}}}

    guard = guarded(readiness=readiness)
    for token in ("good", "admin"):  # an API token or the admin token
        status, body = ask(guard, path="/readyz", method="GET", headers=[("x-api-token", token)])
        assert status == 503 and body["models"]["itff-X-direction"]["problem"] == "no champion"
    assert ask(guard, path="/readyz", method="GET")[0] == 200  # no token: the app's (BentoML's) probe answers
    assert ask(guard, path="/readyz", method="GET", headers=[("x-api-token", "guess")])[0] == 401


def test_tradingview_alerts_are_signed_over_the_raw_body_recent_and_accepted_once(tmp_path):
    import time

    from itff_platform.serving.guard import body_signature

    guard = guarded(tradingview_secret="s", tradingview_window_s=60, seen_signatures=tmp_path / "seen")
    body = json.dumps(
        {"ticker": "BINANCE:BTCUSDT", "close": 1.0, "time": "2024-01-01T00:00:00Z", "sent_at": time.time()}
    ).encode()
    signature = body_signature("s", body)

    def post(payload, sig, **kw):
        return ask(
            guard,
            path="/tradingview",
            body=payload,
            query=b"token=good",
            headers=[("x-signature", sig)] if sig else [],
            **kw,
        )

    assert post(body, signature) == (200, body)  # the body reaches the service intact
    status, answer = post(body, signature)
    assert status == 409 and "replay" in answer["error"]
    assert post(body.replace(b'"close": 1.0', b'"close": 2.0'), signature)[0] == 401  # any byte changed
    assert post(body, None)[0] == 401
    stale = json.dumps({"ticker": "BTCUSDT", "sent_at": time.time() - 600}).encode()
    assert post(stale, body_signature("s", stale))[1]["field"] == "sent_at"
    # The replay cache is shared through the folder: a second worker (another guard) refuses it too.
    other = guarded(tradingview_secret="s", tradingview_window_s=60, seen_signatures=tmp_path / "seen")
    assert (
        ask(other, path="/tradingview", body=body, query=b"token=good", headers=[("x-signature", signature)])[0] == 409
    )
