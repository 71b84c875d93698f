"""Request validation and online features: the same build_features the lake uses, on the posted candles."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import numpy as np
import polars as pl
from pydantic import BaseModel, field_validator

from itff_platform.features.regime import REGIMES
from itff_platform.settings import Settings


class RequestError(ValueError):
    """A bad request: the message names the field and the rule."""


class Candle(BaseModel):
    timestamp: datetime
    open: float
    high: float
    low: float
    close: float
    volume: float

    @field_validator("timestamp")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def minimum_candles(settings: Settings) -> int:
    """Bars after which every model feature is defined (the 14-day average daily range is the longest)."""
    return (settings.daily_range_days + 1) * settings.bars_per_day


def features_from_candles(candles: list[Candle], settings: Settings, rows: int, names: list[str]) -> tuple[np.ndarray, str, datetime]:
    """The last `rows` rows of the model's features (`names`, in its order) computed from the candles,
    the regime of the last bar, and its time."""
    needed = minimum_candles(settings)
    if len(candles) < needed:
        raise RequestError(f"candles: {len(candles)} given; at least {needed} {settings.interval} bars are needed for the features")
    frame = pl.DataFrame([c.model_dump() for c in candles]).with_columns(pl.col("timestamp").cast(pl.Datetime("us", "UTC")))
    for column in ("open", "high", "low", "close", "volume"):
        if not frame[column].is_finite().all() or (frame[column] <= 0).any():
            raise RequestError(f"candles.{column}: every value must be a finite number > 0")
    if not frame["timestamp"].is_sorted() or frame["timestamp"].n_unique() != frame.height:
        raise RequestError("candles.timestamp: must be strictly increasing")
    from itff_platform.features.silver import build_features

    silver = build_features(frame, settings).collect(engine="in-memory").tail(rows)
    x = silver.select(names).to_numpy()
    if not np.isfinite(x).all():  # every row a sequence model reads, not only the last
        bad = sorted({n for row in x for n, v in zip(names, row) if not math.isfinite(v)})
        raise RequestError(f"candles: features {bad} are undefined over the last {rows} bar(s); send a longer window")
    return x, silver["regime"][-1], silver["timestamp"][-1]


def features_from_row(features: dict[str, float] | list[float], expected: list[str]) -> np.ndarray:
    """A feature row as a dict by name, or a list in the model's order."""
    if isinstance(features, list):
        if len(features) != len(expected):
            raise RequestError(f"features: {len(features)} values given; this model takes {len(expected)}, in order {expected}")
        values = features
    else:
        missing, unexpected = [f for f in expected if f not in features], sorted(set(features) - set(expected))
        if missing or unexpected:
            raise RequestError(f"features: missing {missing}, unexpected {unexpected}; expected {expected}")
        values = [features[f] for f in expected]
    bad = [name for name, v in zip(expected, values) if v is None or not math.isfinite(v)]
    if bad:
        raise RequestError(f"features: {bad} must be finite numbers (NaN and infinity are refused)")
    return np.asarray([values], dtype=np.float64)


def parse_bar_time(value: str, settings: Settings, now: datetime | None = None) -> datetime:
    """The time of the bar a feature row describes, as the lake stamps it (the bar's open, in UTC).

    ISO-8601; without a timezone it is read as UTC. It must fall on a bar boundary, or no silver row would
    ever match it and the prediction would wait for its outcome forever; and it may be at most one bar ahead
    of now (clock skew), since a later bar has not begun."""
    example = "2024-09-30T23:00:00Z"
    try:
        at = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        at = at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at.astimezone(timezone.utc)
    except (ValueError, OverflowError, AttributeError):
        raise RequestError(f"bar_time: {value!r:.60} is not an ISO-8601 time such as {example}") from None
    if at.timestamp() % settings.interval_seconds:
        raise RequestError(f"bar_time: {at.isoformat()} is not on a {settings.interval} bar boundary (a bar's open time, "
                           f"such as {example})")
    latest = (now or datetime.now(timezone.utc)).timestamp() + settings.interval_seconds
    if at.timestamp() > latest:
        raise RequestError(f"bar_time: {at.isoformat()} is in the future; at most one {settings.interval} bar after now is accepted")
    return at


def checked_regime(value: str | None) -> str | None:
    """A client's regime must be one of the six names: it becomes a metric label and a log column."""
    if value is not None and value not in REGIMES:
        raise RequestError(f"regime: {value!r:.60} is not one of {REGIMES}")
    return value


def regime_from_lake(settings: Settings, symbol: str, bar_time: datetime) -> str | None:
    """The regime the lake computed for the symbol's bar at `bar_time`, or None when it does not hold that bar (yet)."""
    from itff_platform.lake.delta import read_rows
    from itff_platform.lake.layers import LakeTables

    end = bar_time + timedelta(seconds=settings.interval_seconds)
    try:
        rows = read_rows(LakeTables.under(settings).silver, settings.interval, symbol, bar_time, end)
    except FileNotFoundError:
        return None
    regime = rows["regime"][0] if rows.height else None
    return regime if regime in REGIMES else None


def normalise_symbol(ticker: str) -> str:
    """TradingView tickers: BINANCE:BTCUSDT, BTCUSDTPERP, BTCUSDT.P, btcusdt -> BTCUSDT."""
    symbol = ticker.split(":")[-1].strip().upper()
    for suffix in (".P", "PERP"):
        symbol = symbol.removesuffix(suffix)
    return symbol


def tradingview_signature(secret: str, ticker: str, time: str, close: float) -> str:
    import hashlib
    import hmac

    return hmac.new(secret.encode(), f"{ticker}|{time}|{close}".encode(), hashlib.sha256).hexdigest()


def features_from_lake(settings: Settings, symbol: str, at: datetime) -> tuple[np.ndarray, str, datetime, float]:
    """The silver row of the last bar at or before `at`: features, regime, bar time and close."""
    from itff_platform.features.silver import feature_columns
    from itff_platform.lake.delta import read_rows
    from itff_platform.lake.layers import LakeTables

    at = at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at.astimezone(timezone.utc)
    bar = timedelta(seconds=settings.interval_seconds)
    try:
        rows = read_rows(LakeTables.under(settings).silver, settings.interval, symbol, at - 48 * bar, at + bar)
    except FileNotFoundError as error:
        raise RequestError(f"candles: none sent and the lake has no silver table ({error})") from None
    rows = rows.filter(pl.col("timestamp") <= at)
    if rows.is_empty():
        raise RequestError(f"time: the lake has no {symbol} bar at or before {at:%Y-%m-%d %H:%M}; send candles instead")
    last = rows.tail(1)
    x = last.select(feature_columns(settings)).to_numpy()
    if not np.isfinite(x).all():
        raise RequestError(f"time: the lake's {symbol} bar at {at:%Y-%m-%d %H:%M} has undefined features; send candles")
    return x, last["regime"][0], last["timestamp"][0], float(last["close"][0])
