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
    def __init__(self, app, tokens: list[str], admin_token: str | None, per_minute: int, burst: int, max_bytes: int) -> None:
        self.app, self.tokens, self.admin_token, self.max_bytes = app, list(tokens), admin_token, max_bytes
        self.buckets = TokenBuckets(per_minute, burst)

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(PROTECTED):
            return await self.app(scope, receive, send)
        headers = {k.decode().lower(): v.decode() for k, v in scope.get("headers", [])}
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
            return await _reply(send, 429, {"error": f"rate limit: at most {self.buckets.rate * 60:g} requests/minute per token",
                                            "retry_after_s": retry}, {"retry-after": str(retry)})
        length = headers.get("content-length")
        if length is not None and int(length) > self.max_bytes:
            return await _reply(send, 413, {"error": f"request body: {length} bytes exceeds the limit of {self.max_bytes}"})
        return await self.app(scope, _limited(receive, self.max_bytes), send)


def _limited(receive, max_bytes: int):
    """Count streamed (chunked) bodies too; past the limit the request is cut off."""
    seen = 0

    async def wrapped():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > max_bytes:
                raise ValueError(f"request body: exceeds the limit of {max_bytes} bytes")
        return message

    return wrapped


async def _reply(send, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})
