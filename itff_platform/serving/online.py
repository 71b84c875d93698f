"""Request validation and online features: the same build_features the lake uses, on the posted candles,
after the lake's own cleaning rules (lake/cleaning.py) have judged them."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, cast

import numpy as np
import polars as pl
from pydantic import BaseModel, Strict

from itff_platform.rules import EXAMPLE_TIME, REGIMES, as_utc, bar_open
from itff_platform.settings import INTERVAL_SECONDS, Settings

if TYPE_CHECKING:
    from itff_platform.contracts.champions import LoadedModel

log = logging.getLogger("itff_platform.serving")
# A JSON number, never a boolean or a numeric string: lax pydantic would read `true` as 1.0 and "1.5" as 1.5.
Number = Annotated[float, Strict()]
FLOAT32_MAX = float(np.finfo(np.float32).max)  # the models compute in float32: anything larger becomes inf
LAKE_LOOKBACK_BARS = 48  # how far back an alert's bar is looked for in the lake; older, and the caller sends candles
# TradingView's exchange prefixes and what they mean. The models are trained on Binance spot candles; any other
# market (another exchange, a perpetual future) has other prices, so it is refused rather than guessed at.
EXCHANGES = {"BINANCE": "Binance spot"}
PERPETUAL_SUFFIXES = (".P", "PERP")


class RequestError(ValueError):
    """A bad request: the message names the field and the rule; `details` are extra keys of the JSON answer."""

    def __init__(self, message: str, **details: str | None) -> None:
        super().__init__(message)
        self.details = details

    @property
    def field(self) -> str:
        return str(self).split(":", 1)[0]


class Candle(BaseModel):
    """One bar. A time without a timezone is read as UTC; any offset is accepted and converted to UTC when the
    window becomes a frame (candle_frame), all at once: a per-candle validator cost more than the rest of
    validating 800 candles."""

    timestamp: datetime
    open: Number
    high: Number
    low: Number
    close: Number
    volume: Number


def minimum_candles(settings: Settings) -> int:
    """Bars after which every model feature is defined (the 14-day average daily range is the longest)."""
    return (settings.features.daily_range_days + 1) * settings.bars_per_day


def model_interval(model: LoadedModel, settings: Settings) -> str:
    """The bar interval the model was trained on (meta.json), else the service's."""
    interval = model.meta.get("interval") or settings.interval
    return interval if interval in INTERVAL_SECONDS else settings.interval


EPOCH, NAIVE_EPOCH = datetime(1970, 1, 1, tzinfo=UTC), datetime(1970, 1, 1)
MICROSECOND = timedelta(microseconds=1)
FIRST_UTC_US = (datetime.min.replace(tzinfo=UTC) - EPOCH) // MICROSECOND
LAST_UTC_US = (datetime.max.replace(tzinfo=UTC) - EPOCH) // MICROSECOND
CANDLE_VALUES = ("open", "high", "low", "close", "volume")


def candle_frame(candles: list[Candle]) -> pl.DataFrame:
    """The candles as a frame (timestamp in UTC microseconds), built from two numpy arrays: one pass over the
    objects, no per-candle dict."""
    stamps = np.fromiter(
        (
            ((c.timestamp - EPOCH) if c.timestamp.tzinfo else (c.timestamp - NAIVE_EPOCH)) // MICROSECOND
            for c in candles
        ),
        np.int64,
        len(candles),
    )
    outside = (stamps < FIRST_UTC_US) | (stamps > LAST_UTC_US)  # year 1 at +01:00 is in year 0 in UTC
    if outside.any():
        raise RequestError(f"candles[{int(outside.argmax())}].timestamp: not representable in UTC")
    values = np.array([(c.open, c.high, c.low, c.close, c.volume) for c in candles], dtype=np.float64)
    values = values.reshape(len(candles), len(CANDLE_VALUES))
    return pl.DataFrame(
        {
            "timestamp": pl.Series(stamps).cast(pl.Datetime("us", "UTC")),
            **{name: values[:, i] for i, name in enumerate(CANDLE_VALUES)},
        }
    )


def checked_candles(
    candles: list[Candle], settings: Settings, interval: str, now: datetime | None = None
) -> pl.DataFrame:
    """The candles as a frame, once they pass what the lake demands of bronze (the same rules, by calling
    lake.cleaning.clean_raw) plus what a request adds: strictly increasing, spaced at the model's interval,
    and not from the future."""
    frame = candle_frame(candles)
    check_window(frame, interval)
    check_not_future(frame, interval, now)
    return frame


def check_window(frame: pl.DataFrame, interval: str) -> None:
    """What depends only on the candles themselves (so a window's verdict can be remembered): the lake's
    cleaning rules, strictly increasing, spaced at the model's interval."""
    from itff_platform.lake.cleaning import clean_raw

    steps = frame["timestamp"].diff().dt.total_seconds().slice(1)
    if (steps <= 0).any():
        first = cast(int, (steps <= 0).arg_max()) + 1  # some step is <= 0: arg_max has a row
        raise RequestError(
            f"candles[{first}].timestamp: must be strictly increasing "
            f"({frame['timestamp'][first]} follows {frame['timestamp'][first - 1]})"
        )
    seconds = INTERVAL_SECONDS[interval]
    judged = clean_raw(
        frame.with_columns(
            pl.lit(interval).alias("interval"),
            pl.lit("request").alias("symbol"),
            pl.int_range(pl.len()).alias("position"),
        ),
        seconds,
    )
    if judged.quarantine.height:
        worst = judged.quarantine.sort("position").row(0, named=True)
        field, rule = worst["rule"].split(":", 1)
        raise RequestError(
            f"candles[{worst['position']}].{field}:{rule} (the lake's cleaning rule; "
            f"{judged.quarantine.height} of {frame.height} candles break one)"
        )
    median = float(cast(float, steps.median())) if len(steps) else seconds
    if median != seconds:
        raise RequestError(
            f"candles.timestamp: the candles are {_duration(median)} apart; this model is trained on "
            f"{interval} bars ({seconds} s apart)"
        )


def check_not_future(frame: pl.DataFrame, interval: str, now: datetime | None = None) -> None:
    latest = (now or datetime.now(UTC)) + timedelta(seconds=INTERVAL_SECONDS[interval])
    if frame["timestamp"][-1] > latest:
        raise RequestError(
            f"candles[{frame.height - 1}].timestamp: {frame['timestamp'][-1].isoformat()} is in the future; "
            f"a bar opens at most one {interval} bar after now"
        )


def _duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)} {unit}"
    return f"{seconds:g} s"


Answer = tuple[np.ndarray, str, datetime]  # a model's input rows, the last bar's regime, its time


def features_from_row(features: dict[str, float] | list[float], expected: list[str]) -> np.ndarray:
    """A feature row as a dict by name, or a list in the model's order."""
    if isinstance(features, list):
        if len(features) != len(expected):
            raise RequestError(
                f"features: {len(features)} values given; this model takes {len(expected)}, in order {expected}"
            )
        values = features
    else:
        missing, unexpected = [f for f in expected if f not in features], sorted(set(features) - set(expected))
        if missing or unexpected:
            raise RequestError(f"features: missing {missing}, unexpected {unexpected}; expected {expected}")
        values = [features[f] for f in expected]
    not_numbers = [
        name for name, v in zip(expected, values, strict=True) if isinstance(v, bool) or not isinstance(v, (int, float))
    ]
    if not_numbers:
        raise RequestError(f"features: {not_numbers} must be numbers (not booleans or strings)")
    bad = [name for name, v in zip(expected, values, strict=True) if not math.isfinite(v)]
    if bad:
        raise RequestError(f"features: {bad} must be finite numbers (NaN and infinity are refused)")
    x = np.asarray([values], dtype=np.float64)
    checked_rows(x, "features", expected)
    return x


def checked_rows(x: np.ndarray, field: str, names: list[str]) -> np.ndarray:
    """Every value finite and within float32 range (the models compute in float32: 1e39 would become inf)."""
    finite = np.isfinite(x)
    if not finite.all():
        rows = sorted({int(i) for i in np.argwhere(~finite)[:, 0]})
        raise RequestError(f"{field}: NaN and infinity are refused (rows {rows[:5]})")
    huge = np.abs(x) > FLOAT32_MAX
    if huge.any():
        row, column = (int(v) for v in np.argwhere(huge)[0])
        raise RequestError(
            f"{field}: {names[column]} = {x[row, column]:.3g} in row {row} is beyond the float32 range "
            f"(|value| <= {FLOAT32_MAX:.3g}) the models compute in"
        )
    return x


def checked_model_input(model: LoadedModel, x: np.ndarray, field: str) -> None:
    """Finite in float64 and in float32, but not once scaled (e.g. 1e38 over a tiny training spread): refuse it."""
    if model.forecaster.scaler is not None:
        with np.errstate(all="ignore"):
            scaled = model.forecaster.scale(x)
        if not np.isfinite(scaled).all():
            raise RequestError(f"{field}: a value is too large for the model (beyond float32 range once scaled)")


def checked_output(out: np.ndarray, field: str) -> None:
    """A model output that is not finite (an input far outside anything seen in training) is not an answer."""
    if not np.isfinite(np.asarray(out, dtype=np.float64)).all():
        raise RequestError(
            f"{field}: the model's output is not finite for these values; they are far outside its training data"
        )


def parse_time(value: str, field: str) -> datetime:
    """ISO-8601, in UTC; without a timezone it is read as UTC."""
    try:
        return as_utc(datetime.fromisoformat(value.strip().replace("Z", "+00:00")))
    except (ValueError, OverflowError, AttributeError):
        raise RequestError(f"{field}: {value!r:.60} is not an ISO-8601 time such as {EXAMPLE_TIME}") from None


def parse_bar_time(value: str, settings: Settings, now: datetime | None = None, field: str = "bar_time") -> datetime:
    """The time of the bar a feature row describes, as the lake stamps it (the bar's open, in UTC): rules.bar_open.
    Off a bar boundary no silver row would ever match it, and the prediction would wait for its outcome forever."""
    try:
        return bar_open(value, settings.interval_seconds, settings.interval, now)
    except ValueError as error:
        raise RequestError(f"{field}: {error}") from None


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


def newest_lake_regime(settings: Settings, symbol: str) -> tuple[str, datetime] | None:
    """(regime, bar time) of the symbol's newest silver bar: what market_regime_state reports. Only the newest
    month's files are read, found from the Delta log, so a poll costs the same however long the history."""
    from deltalake import DeltaTable

    from itff_platform.lake.delta import read_rows
    from itff_platform.lake.layers import LakeTables

    path = LakeTables.under(settings).silver
    if not DeltaTable.is_deltatable(path):
        return None
    files = pl.DataFrame(DeltaTable(path).get_add_actions(flatten=True))
    months = files.filter((pl.col("partition.symbol") == symbol) & (pl.col("partition.interval") == settings.interval))
    if months.is_empty():
        return None
    newest = cast(date, months["partition.month"].max())  # not empty: a month
    start = datetime(newest.year, newest.month, 1, tzinfo=UTC)
    rows = read_rows(path, settings.interval, symbol, start).filter(pl.col("regime").is_in(REGIMES))
    return (rows["regime"][-1], rows["timestamp"][-1]) if rows.height else None


def tradingview_symbol(ticker: str) -> str:
    """TradingView's {{ticker}}: BINANCE:BTCUSDT or a bare BTCUSDT (taken as Binance spot) -> BTCUSDT.
    Other exchanges and perpetual futures (BYBIT:ETHUSDT.P, BTCUSDTPERP) trade at other prices: refused."""
    exchange, _, symbol = ticker.strip().rpartition(":")
    exchange, symbol = exchange.strip().upper(), symbol.strip().upper()
    if exchange and exchange not in EXCHANGES:
        raise RequestError(
            f"ticker: exchange prefix {exchange!r:.30} is not served; the models are trained on "
            f"{', '.join(f'{k}: ({v})' for k, v in EXCHANGES.items())}"
        )
    if symbol.endswith(PERPETUAL_SUFFIXES):
        raise RequestError(f"ticker: {ticker!r:.40} is a perpetual future; the models are trained on spot candles")
    if not symbol.isalnum():
        raise RequestError(f"ticker: {ticker!r:.40} is not a ticker such as BINANCE:BTCUSDT")
    return symbol


@dataclass(frozen=True)
class LakeBar:
    x: np.ndarray
    regime: str
    bar_time: datetime  # the lake's bar that answers
    close: float
    age_bars: int  # bars between that bar and the one asked about: 0 when the lake holds the bar asked about


def features_from_lake(
    settings: Settings, symbol: str, at: datetime, max_age_bars: int = LAKE_LOOKBACK_BARS
) -> LakeBar:
    """The silver row of the bar at `at` (floored to the bar's open), or else of the newest bar before it, with
    how many bars older that is. A bar the lake quarantined is refused, never answered from the bar before it."""
    from itff_platform.features.silver import feature_columns
    from itff_platform.lake.delta import read_rows
    from itff_platform.lake.layers import LakeTables

    bar = timedelta(seconds=settings.interval_seconds)
    asked = datetime.fromtimestamp(at.timestamp() // settings.interval_seconds * settings.interval_seconds, UTC)
    tables = LakeTables.under(settings)
    try:
        start = asked - max_age_bars * bar
    except OverflowError:  # the year 1: no bar, and no window before it
        raise RequestError(f"time: {at.isoformat()} is before any bar the lake can hold") from None
    try:
        rows = read_rows(tables.silver, settings.interval, symbol, start, asked + bar)
    except FileNotFoundError as error:
        raise RequestError(f"candles: none sent and the lake has no silver table ({error})") from None
    if rows.is_empty() or rows["timestamp"][-1] != asked:
        rule = quarantined_rule(settings, symbol, asked)
        if rule is not None:
            raise RequestError(
                f"time: the lake quarantined the {symbol} bar at {asked:%Y-%m-%d %H:%M} ({rule}); "
                "it is not answered from an older bar: send candles"
            )
    if rows.is_empty():
        raise RequestError(
            f"time: the lake has no {symbol} bar within {max_age_bars} bars before {asked:%Y-%m-%d %H:%M}; "
            "send candles instead"
        )
    last = rows.tail(1)
    x = last.select(feature_columns(settings)).to_numpy()
    if not np.isfinite(x).all():
        raise RequestError(
            f"time: the lake's {symbol} bar at {last['timestamp'][0]:%Y-%m-%d %H:%M} has undefined features; send candles"
        )
    age = int((asked - last["timestamp"][0]) / bar)
    return LakeBar(x, last["regime"][0], last["timestamp"][0], float(last["close"][0]), age)


def quarantined_rule(settings: Settings, symbol: str, at: datetime) -> str | None:
    """The rule the lake's quarantine recorded for the symbol's bar at `at`, or None."""
    from itff_platform.lake.delta import read_rows
    from itff_platform.lake.layers import LakeTables

    try:
        rows = read_rows(
            LakeTables.under(settings).quarantine,
            settings.interval,
            symbol,
            at,
            at + timedelta(seconds=settings.interval_seconds),
        )
    except FileNotFoundError:
        return None
    return str(rows["rule"][-1]) if rows.height else None
