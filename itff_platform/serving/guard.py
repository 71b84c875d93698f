"""ASGI middleware in front of the prediction endpoints: token auth, per-token rate limit, body size limit.

Plain ASGI so it sits under BentoML (Service.add_asgi_middleware) and can be tested on its own."""

from __future__ import annotations

import hmac
import json
import threading
import time
from urllib.parse import parse_qs

PROTECTED = ("/predict", "/consensus", "/tradingview", "/admin/")


class TokenBuckets:
    """A bucket per token: `burst` requests at once, refilled at `per_minute`."""

    def __init__(self, per_minute: int, burst: int) -> None:
        self.rate, self.burst = per_minute / 60.0, burst
        self._state: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, token: str, now: float | None = None) -> float:
        """0 when allowed, else the seconds until one request is available."""
        now = time.monotonic() if now is None else now
        with self._lock:
            level, since = self._state.get(token, (float(self.burst), now))
            level = min(self.burst, level + (now - since) * self.rate)
            if level >= 1:
                self._state[token] = (level - 1, now)
                return 0.0
            self._state[token] = (level, now)
            return (1 - level) / self.rate


def token_matches(given: str, accepted: list[str]) -> bool:
    # Compare against every accepted token, always, in constant time: no early exit to time.
    found = False
    for token in accepted:
        found |= hmac.compare_digest(given.encode(), token.encode())
    return found


class GuardMiddleware:
    def __init__(self, app, tokens: list[str], admin_token: str | None, per_minute: int, burst: int, max_bytes: int,
                 workers: int = 1) -> None:
        self.app, self.tokens, self.admin_token, self.max_bytes = app, list(tokens), admin_token, max_bytes
        self.per_minute = per_minute
        # Each worker process keeps its own buckets, so each enforces its share: N workers never allow N x the limit.
        self.buckets = TokenBuckets(max(1, per_minute // workers), max(1, burst // workers))

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(PROTECTED):
            return await self.app(scope, receive, send)
        # latin-1 decodes any byte: a malformed header must get a 4xx, not crash the middleware.
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        token = headers.get("x-api-token")
        if token is None and path.startswith("/tradingview"):
            # TradingView alerts cannot set headers; they may carry the token in the webhook URL instead.
            token = parse_qs(scope.get("query_string", b"").decode()).get("token", [None])[0]
        accepted = [self.admin_token] if path.startswith("/admin/") and self.admin_token else self.tokens
        if path.startswith("/admin/") and not self.admin_token:
            return await _reply(send, 404, {"error": "admin endpoints are disabled: set ITFF_ADMIN_TOKEN"})
        if not token:
            return await _reply(send, 401, {"error": "X-API-Token: header is required", "field": "X-API-Token"})
        if not token_matches(token, accepted):
            return await _reply(send, 401, {"error": "X-API-Token: not a valid token", "field": "X-API-Token"})
        wait = self.buckets.take(token)
        if wait > 0:
            retry = max(1, int(wait + 0.999))
            return await _reply(send, 429, {"error": f"rate limit: at most {self.per_minute} requests/minute per token",
                                            "retry_after_s": retry}, {"retry-after": str(retry)})
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return await _reply(send, 400, {"error": f"Content-Length: {length!r} is not a byte count"})
            if int(length) > self.max_bytes:
                return await _reply(send, 413, {"error": f"request body: {length} bytes exceeds the limit of {self.max_bytes}"})
            return await self.app(scope, receive, send)
        # No length given (chunked): read up to the limit ourselves, answer 413 past it, else replay the body.
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await _reply(send, 413, {"error": f"request body: exceeds the limit of {self.max_bytes} bytes"})
        return await self.app(scope, _replay(body), send)


def _replay(body: bytes):
    sent = False

    async def receive():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


async def _reply(send, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})
