"""POST /predict answered below the guard without BentoML's request machinery, for the plain bodies clients send.

Under a feature row, BentoML's routing, input model, endpoint wrapper and context took most of a worker's time
(docs/benchmarks.md); under 800 candles, pydantic building 800 `Candle` objects did. This route reads a body
that is plainly valid (every field of the expected JSON type, candle times in plain ISO-8601 UTC, numbers
finite) into the same arguments the API gets, the candles straight into a frame, and calls the same handler
(`ItffService.answer_predict`): the same checks, answer, prediction log (write-ahead) and model metrics.
Anything else, a body with a wrong type, an odd time or a constant like NaN, is replayed to BentoML unchanged, so
every refusal keeps the message pydantic gives it. It sits inside the guard (auth, rate limit, size limit) and
inside BentoML's request metrics and tracing, which therefore still count every request."""

from __future__ import annotations

import logging
import re
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pydantic_core

from itff_platform.serving.guard import _replay, reply
from itff_platform.serving.online import CANDLE_VALUES, FIRST_UTC_US

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("itff_platform.serving")
PATH = "/predict"
FIELDS = frozenset({"symbol", "target", "features", "candles", "regime", "bar_time"})
OPTIONAL_TEXT = ("target", "regime", "bar_time")
# What the fast path reads as a candle time: ISO-8601 to the second (a fraction allowed) in UTC, written with Z,
# +00:00 or no offset (read as UTC, as Candle does). Other forms (offsets, Unix seconds) go the pydantic way.
PLAIN_TIME = r"^\d{4}-\d{2}-\d{2}T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?(Z|\+00:00)?$"
UTC_SUFFIX = re.compile(r"(Z|\+00:00)$")
BODIES_KEPT = 64  # candle bodies (and their parsed arguments) each worker remembers (~110 + 40 KB for 800 bars)
BODY_BYTES_KEPT = 16 * 2**20  # and at most this many bytes of them (bodies run up to max_request_bytes each)
REMEMBERED_FROM_BYTES = 4096  # a feature row parses in microseconds: only bodies this large are remembered
EXACT_INT = 2**53  # beyond this an integer is not exactly a float; pydantic's word on it is kept


class NotPlain(Exception):
    """The body is not plainly valid: BentoML's path (pydantic) answers it."""


def plain_arguments(body: bytes) -> dict[str, Any] | None:
    """The handler's arguments when the body is plainly valid, with candles as a frame; else None."""
    try:
        # pydantic's own JSON parser (jiter), as BentoML's input model reads the body; NaN and Infinity raise.
        data = pydantic_core.from_json(body, allow_inf_nan=False)
        if not isinstance(data, dict) or not data.keys() <= FIELDS or not isinstance(data.get("symbol"), str):
            return None
        if any(data.get(name) is not None and not isinstance(data[name], str) for name in OPTIONAL_TEXT):
            return None
        if "target" in data and data["target"] is None:
            return None  # `target: str` takes no null
        features, candles = data.get("features"), data.get("candles")
        if features is not None:
            values = features.values() if isinstance(features, dict) else features
            if not isinstance(features, (dict, list)) or not _plain_numbers(values):
                return None
        if candles is not None:
            data["candles"] = candle_columns(candles)
        return data
    except (NotPlain, ValueError, TypeError, KeyError, OverflowError, pl.exceptions.PolarsError):
        return None


def _plain_numbers(values: Any) -> bool:
    """Every value a JSON number pydantic's strict float takes as is: a float, or an int a float holds exactly."""
    kinds = set(map(type, values))
    if not kinds <= {float, int}:
        return False
    return int not in kinds or all(-EXACT_INT <= v <= EXACT_INT for v in values if type(v) is int)


def candle_columns(candles: Any) -> pl.DataFrame:
    """The candles as candle_frame makes them (UTC microseconds, float64 values), read column by column: no
    per-candle object. Raises NotPlain (or a KeyError/TypeError/ValueError) for anything not plainly a candle."""
    if not isinstance(candles, list) or not all(type(c) is dict for c in candles):
        raise NotPlain("candles")
    stamps = pl.Series([c["timestamp"] for c in candles], dtype=pl.String, strict=True)
    if stamps.null_count() or not stamps.str.contains(PLAIN_TIME).all():
        raise NotPlain("timestamp")
    # numpy checks the calendar (a 30 February raises ValueError) as it parses.
    parsed = stamps.str.replace(UTC_SUFFIX.pattern, "").to_numpy().astype("datetime64[us]").astype(np.int64)
    if parsed.min() < FIRST_UTC_US:  # numpy reads a year 0, which Python's datetime (so pydantic) refuses
        raise NotPlain("timestamp")
    columns = {}
    for name in CANDLE_VALUES:
        column = [c[name] for c in candles]
        if not _plain_numbers(column):
            raise NotPlain(name)
        columns[name] = np.asarray(column, dtype=np.float64)
    return pl.DataFrame({"timestamp": pl.Series(parsed).cast(pl.Datetime("us", "UTC")), **columns})


class FastPredictRoute:
    """POST /predict, for plainly valid bodies, inside the guard; `handler(**arguments)` gives the response."""

    def __init__(
        self,
        app: ASGIApp,
        handler: Callable[..., Awaitable[Any]],
        kept: int = BODIES_KEPT,
        kept_bytes: int = BODY_BYTES_KEPT,
    ) -> None:
        self.app, self.handler, self.kept, self.kept_bytes = app, handler, kept, kept_bytes
        self._bytes = 0  # of the bodies remembered
        # Candle bodies already read, by content: a window sent again (the same bar asked about by several
        # clients, or again) costs a hash, not a parse. The arguments are never mutated (frames are immutable).
        self._bodies: OrderedDict[bytes, dict[str, Any]] = OrderedDict()

    def arguments(self, body: bytes) -> dict[str, Any] | None:
        if len(body) < REMEMBERED_FROM_BYTES:
            return plain_arguments(body)
        # Keyed by the body itself: Python's (keyed, SipHash) hash of 100 KB plus one memcmp on a hit cost a fifth
        # of a blake2b digest, and equal keys are equal bodies, not merely equal digests.
        known = self._bodies.get(body)
        if known is not None:
            self._bodies.move_to_end(body)
            return known
        arguments = plain_arguments(body)
        if arguments is not None and len(body) <= self.kept_bytes and body not in self._bodies:
            self._bodies[body] = arguments
            self._bytes += len(body)
            while len(self._bodies) > self.kept or self._bytes > self.kept_bytes:
                self._bytes -= len(self._bodies.popitem(last=False)[0])
        return arguments

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") != PATH or scope.get("method") != "POST":
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:  # the guard has bounded it: Content-Length within the limit, or read up to the limit
            message = await receive()
            if message["type"] != "http.request":
                return None  # the client left
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)  # not `body += chunk`, which copies the body so far at every chunk
        arguments = self.arguments(body)
        if arguments is None:
            return await self.app(scope, _replay(body), send)
        try:
            response = await self.handler(**arguments)
        except Exception:  # as BentoML answers an endpoint that raised: a 500, logged with its traceback
            log.exception("POST /predict failed")
            return await reply(send, 500, {"error": "An unexpected error has occurred, please check the server log."})
        await response(scope, _replay(b""), send)
