"""ASGI middleware in front of the service: media type, token auth (deny by default) with a per-IP failure budget,
per-token rate limit, body size limit, and the TradingView signature (an HMAC over the raw body, inside a time
window, once).

Plain ASGI so it sits under BentoML (Service.add_asgi_middleware) and can be tested on its own."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("itff_platform.serving.guard")
# Deny by default: every path needs a token (the admin token under /admin/) except these, which are read-only: GET
# (and HEAD, its bodiless twin); another method gets 405 from the guard, so no code behind them runs for it. A new
# endpoint, ours or one BentoML adds (such as /schema.json), is protected until it is named here.
PUBLIC = frozenset({"/", "/docs", "/docs.json", "/healthz", "/livez", "/readyz", "/metrics"})
# The Swagger page at / loads its scripts and styles from here (BentoML's static files; nothing else is under it).
PUBLIC_PREFIXES = ("/static_content/",)
READ_METHODS = ("GET", "HEAD")
# GET /readyz without a token is BentoML's bare probe (what Kubernetes calls); with a token, the guard answers it
# with every model's state, which only a token holder may see.
DETAILS = "/readyz"
DOCUMENT = "/docs.json"  # the OpenAPI document, answered by the guard with the service's own additions
# The API speaks JSON. TradingView posts JSON as text/plain; BentoML reads any other type as JSON too, except
# these, which it parses as forms or pickles (a multipart body without a boundary made it answer 500).
REFUSED_MEDIA_TYPES = ("multipart/", "application/x-www-form-urlencoded", "application/vnd.bentoml")
MAX_BUCKETS = (
    100_000  # keys are client addresses too: past this many, full buckets are forgotten, never an unbounded map
)
# Paths that take the admin token, and only it: everything under /admin/, and runbook 004's drawdown unlock.
ADMIN_ONLY = ("/risk/reset",)
SIGNATURE_CHARS = 64  # a hex HMAC-SHA256 is 64 characters: the file that records one is named by no more
SWEEP_AFTER_WINDOWS = 2  # a seen signature older than this many windows is refused by its timestamp anyway


class TokenBuckets:
    """A bucket per key: `burst` requests at once, refilled at `per_minute`."""

    def __init__(self, per_minute: int, burst: int) -> None:
        self.rate, self.burst = per_minute / 60.0, burst
        self._state: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def _level(self, key: str, now: float) -> float:
        level, since = self._state.get(key, (float(self.burst), now))
        return min(self.burst, level + (now - since) * self.rate)

    def take(self, key: str, now: float | None = None) -> float:
        """0 when allowed, else the seconds until one request is available."""
        now = time.monotonic() if now is None else now
        with self._lock:
            level = self._level(key, now)
            if level >= 1:
                self._state[key] = (level - 1, now)
                return 0.0
            self._state[key] = (level, now)
            if len(self._state) > MAX_BUCKETS:
                self._state = {k: v for k, v in self._state.items() if self._level(k, now) < self.burst}
            return (1 - level) / self.rate

    def full(self, key: str, now: float | None = None) -> bool:
        """The key has its whole burst again: whatever it did has ended."""
        now = time.monotonic() if now is None else now
        with self._lock:
            return self._level(key, now) >= self.burst

    def wait(self, key: str, now: float | None = None) -> float:
        """Like take, without taking: 0 when a request would be allowed now."""
        now = time.monotonic() if now is None else now
        with self._lock:
            level = self._level(key, now)
        return 0.0 if level >= 1 else (1 - level) / self.rate


def is_public(path: str, headers: dict[str, str]) -> bool:
    """Whether a request needs no token. /readyz with a token does: the token asks for the details."""
    if path == DETAILS and "x-api-token" in headers:
        return False
    return path in PUBLIC or path.startswith(PUBLIC_PREFIXES)


def is_admin_path(path: str) -> bool:
    return path.startswith("/admin/") or path in ADMIN_ONLY


def token_matches(given: str, accepted: list[str]) -> bool:
    # Compare against every accepted token, always, in constant time: no early exit to time.
    found = False
    for token in accepted:
        found |= hmac.compare_digest(given.encode(), token.encode())
    return found


def body_signature(secret: str, body: bytes) -> str:
    """What /tradingview expects in X-Signature (or ?signature=): HMAC-SHA256(secret, the raw body), in hex."""
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class SeenSignatures:
    """Signatures already accepted, shared by every worker of every service on this project: one empty file per
    signature, created with O_EXCL, which only one process can win. Files older than twice the window are
    swept, since an alert that old is refused by its timestamp anyway."""

    def __init__(self, folder: Path, window_s: float) -> None:
        self.folder, self.window_s = folder, window_s
        self._swept = 0.0

    def first_time(self, signature: str, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        self.folder.mkdir(parents=True, exist_ok=True)
        if now - self._swept > self.window_s:
            self._sweep(now)
        try:
            os.close(os.open(self.folder / signature[:SIGNATURE_CHARS], os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            return True
        except FileExistsError:
            return False

    def _sweep(self, now: float) -> None:
        self._swept = now
        for path in self.folder.iterdir():
            try:
                if now - path.stat().st_mtime > SWEEP_AFTER_WINDOWS * self.window_s:
                    path.unlink()
            except OSError:
                pass  # another worker swept it first


class GuardMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        tokens: list[str],
        admin_token: str | None,
        per_minute: int,
        burst: int,
        max_bytes: int,
        workers: int = 1,
        auth_failures_per_minute: int = 10,
        auth_failure_burst: int = 20,
        tradingview_secret: str | None = None,
        tradingview_window_s: float = 300.0,
        seen_signatures: Path | None = None,
        readiness: Callable[[], Awaitable[tuple[bool, dict[str, Any]]]] | None = None,
        openapi: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    ) -> None:
        """`readiness`: async () -> (ready, details) for GET /readyz with a token; `openapi`: async () -> the
        document for GET /docs.json. Without them, both paths go to the app."""
        self.app, self.tokens, self.admin_token, self.max_bytes = app, list(tokens), admin_token, max_bytes
        self.readiness, self.openapi = readiness, openapi
        self.per_minute = per_minute
        # Each worker process keeps its own buckets, so each enforces its share: N workers never allow N x the limit.
        self.buckets = TokenBuckets(max(1, per_minute // workers), max(1, burst // workers))
        self.failures = TokenBuckets(max(1, auth_failures_per_minute // workers), max(1, auth_failure_burst // workers))
        self.tradingview_secret, self.tradingview_window_s = tradingview_secret, tradingview_window_s
        self.seen = (
            SeenSignatures(seen_signatures, tradingview_window_s) if seen_signatures and tradingview_secret else None
        )
        self._limited: set[str] = set()  # keys whose refusals have been logged this burst

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope.get("path", ""), scope.get("method", "GET")
        # latin-1 decodes any byte: a malformed header must get a 4xx, not crash the middleware.
        pairs = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope.get("headers", [])]
        headers = dict(pairs)
        if method == "POST":
            media = headers.get("content-type", "").split(";")[0].strip().lower()
            if media.startswith(REFUSED_MEDIA_TYPES):
                return await self._refuse(
                    send, scope, 415, "Content-Type", f"{media!r:.60} is not accepted; send application/json"
                )
        if is_public(path, headers):
            if method not in READ_METHODS:
                return await reply(
                    send,
                    405,
                    {"error": f"method: {method:.10} is not served on {path:.60}; use GET", "field": "method"},
                    {"allow": ", ".join(READ_METHODS)},
                )
            if path == DOCUMENT and method == "GET" and self.openapi is not None:
                return await reply(send, 200, await self.openapi())
            return await self.app(scope, receive, send)
        client = (scope.get("client") or ("?", 0))[0]
        tokens = [v for k, v in pairs if k == "x-api-token"]
        if len(tokens) > 1:  # which one counts would be up to whoever parses the headers: neither
            return await self._refuse(
                send, scope, 400, "X-API-Token", f"sent {len(tokens)} times; send exactly one token"
            )
        if path.startswith("/tradingview"):
            # TradingView alerts cannot set headers; they may carry the token in the webhook URL instead.
            in_url = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [])
            if len(in_url) > 1 or (tokens and in_url and in_url != tokens):
                return await self._refuse(
                    send,
                    scope,
                    400,
                    "X-API-Token",
                    "two different tokens (header and ?token=, or ?token= twice); send exactly one",
                )
            tokens = tokens or in_url
        if is_admin_path(path) and not self.admin_token:
            return await reply(send, 404, {"error": "admin endpoints are disabled: set ITFF_ADMIN_TOKEN"})
        # An address that has spent its failure budget is refused before its token is even compared: otherwise
        # the answer (429 or 200) would still tell a guesser when a guess is right.
        wait = self.failures.wait(client)
        if wait > 0:
            return await self._too_many_failures(send, client, wait)
        if f"ip:{client}" in self._limited and self.failures.full(client):
            self._limited.discard(f"ip:{client}")  # quiet for a whole budget's refill: the burst is over
        accepted = self.tokens
        if is_admin_path(path):
            assert self.admin_token is not None  # an admin path without one got its 404 above
            accepted = [self.admin_token]
        elif path == DETAILS and self.admin_token:
            accepted = [*self.tokens, self.admin_token]
        token = tokens[0] if tokens else None
        if not token or not token_matches(token, accepted):
            self.failures.take(client)
            remaining = self.failures.wait(client) == 0
            problem = "header is required" if not token else "not a valid token"
            log.info(
                "auth: %s %s from %s: X-API-Token %s%s",
                method,
                path,
                client,
                problem,
                "" if remaining else "; failure budget spent",
            )
            return await reply(send, 401, {"error": f"X-API-Token: {problem}", "field": "X-API-Token"})
        wait = self.buckets.take(token)
        if wait > 0:
            retry = max(1, int(wait + 0.999))
            key = "token:" + hashlib.sha256(token.encode()).hexdigest()[:8]  # never the token itself in a log
            if key not in self._limited:
                self._limited.add(key)
                log.info(
                    "rate limit: token %s is over %d requests/minute; answering 429 until it slows down",
                    key[6:],
                    self.per_minute,
                )
            return await reply(
                send,
                429,
                {"error": f"rate limit: at most {self.per_minute} requests/minute per token", "retry_after_s": retry},
                {"retry-after": str(retry)},
            )
        self._limited.discard("token:" + hashlib.sha256(token.encode()).hexdigest()[:8])
        if path == DETAILS and method == "GET" and self.readiness is not None:
            ready, details = await self.readiness()
            return await reply(send, 200 if ready else 503, details)
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                return await self._refuse(send, scope, 400, "Content-Length", f"{length!r:.30} is not a byte count")
            if int(length) > self.max_bytes:
                return await self._refuse(
                    send, scope, 413, "request body", f"{length} bytes exceeds the limit of {self.max_bytes}"
                )
            if not (path.startswith("/tradingview") and self.tradingview_secret):
                return await self.app(scope, receive, send)
        # Read the body up to the limit (413 past it) when its length is unknown or its signature must be checked.
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                return await self._refuse(
                    send, scope, 413, "request body", f"exceeds the limit of {self.max_bytes} bytes"
                )
        if path.startswith("/tradingview") and self.tradingview_secret:
            unsigned = self._tradingview_problem(scope, headers, body)
            if unsigned is not None:
                status, field, rule = unsigned
                if status == 401:
                    self.failures.take(client)  # a wrong signature is a failed authentication
                return await self._refuse(send, scope, status, field, rule)
        return await self.app(scope, _replay(body), send)

    def _tradingview_problem(self, scope: Scope, headers: dict[str, str], body: bytes) -> tuple[int, str, str] | None:
        """None when the alert is signed over its whole body, recent, and new; else (status, field, rule)."""
        given = (
            headers.get("x-signature")
            or parse_qs(scope.get("query_string", b"").decode("latin-1")).get("signature", [None])[0]
        )
        if not given:
            return (
                401,
                "signature",
                "missing: send X-Signature (or ?signature=) = hex HMAC-SHA256(secret, the raw body)",
            )
        assert self.tradingview_secret is not None  # checked only where a secret is set
        if not hmac.compare_digest(
            given.strip().lower().encode(), body_signature(self.tradingview_secret, body).encode()
        ):
            return 401, "signature", "not HMAC-SHA256(secret, the raw body)"
        try:
            sent = json.loads(body).get("sent_at")
        except (ValueError, AttributeError):
            return None  # the service answers a body that is not a JSON object with its own 400
        from itff_platform.serving.online import RequestError, parse_time

        if sent is None:
            return 400, "sent_at", "required when alerts are signed: the alert's send time (ISO-8601 or Unix seconds)"
        try:
            moment = (
                float(sent)
                if isinstance(sent, (int, float)) and not isinstance(sent, bool)
                else parse_time(str(sent), "sent_at").timestamp()
            )
        except (RequestError, OverflowError, ValueError):
            return 400, "sent_at", f"{str(sent)!r:.40} is not an ISO-8601 time or Unix seconds"
        skew = time.time() - moment
        if not abs(skew) <= self.tradingview_window_s:
            return (
                400,
                "sent_at",
                f"{abs(skew):.0f} s from the server's clock; at most {self.tradingview_window_s:g} s is accepted",
            )
        if self.seen is not None and not self.seen.first_time(given.strip().lower()):
            return 409, "signature", "this alert was already received (a replay); each alert is answered once"
        return None

    async def _too_many_failures(self, send: Send, client: str, wait: float) -> None:
        retry = max(1, int(wait + 0.999))
        key = f"ip:{client}"
        if key not in self._limited:  # one line per burst, and no token in it
            self._limited.add(key)
            log.warning(
                "auth: %s has spent its budget of failed authentications (%d, refilling at %d/minute); "
                "answering 429 to its requests for the next %d s",
                client,
                self.failures.burst,
                round(self.failures.rate * 60),
                retry,
            )
        return await reply(
            send,
            429,
            {
                "error": "too many failed authentications from this address",
                "field": "X-API-Token",
                "retry_after_s": retry,
            },
            {"retry-after": str(retry)},
        )

    @staticmethod
    async def _refuse(send: Send, scope: Scope, status: int, field: str, rule: str) -> None:
        log.info("client error %d on %s %s: %s: %s", status, scope.get("method"), scope.get("path"), field, rule)
        return await reply(send, status, {"error": f"{field}: {rule}", "field": field})


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive


async def reply(send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
    payload = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})
