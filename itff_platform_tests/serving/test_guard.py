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

    scope = {"type": "http", "path": path, "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
             "query_string": query}
    asyncio.run(guard(scope, receive, send))
    return sent[0]["status"], sent[1]["body"]


def test_tokens_are_required_on_prediction_paths_only():
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
    guard = GuardMiddleware(echo_app, tokens=["good"], admin_token=None, per_minute=600, burst=60, max_bytes=100, workers=2)
    assert guard.buckets.burst == 30 and guard.buckets.rate * 60 == 300
