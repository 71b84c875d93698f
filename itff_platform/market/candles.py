"""The canonical candle frame every source returns, and the protocol they share."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

import polars as pl

from itff_platform.rules import as_utc

CANDLE_SCHEMA: dict[str, pl.DataType] = {
    "timestamp": pl.Datetime("us", "UTC"),
    "open": pl.Float64(),
    "high": pl.Float64(),
    "low": pl.Float64(),
    "close": pl.Float64(),
    "volume": pl.Float64(),
}
CANDLE_COLUMNS = list(CANDLE_SCHEMA)
PRICE_COLUMNS = ["open", "high", "low", "close"]


class CandleFormatError(ValueError):
    """A source handed us something that is not candles. The message names the field and the rule."""


class CandleSource(Protocol):
    name: str

    def fetch(self, symbol: str, interval: str, start: datetime, end: datetime) -> pl.DataFrame:
        """UTC candles with open time in [start, end), in CANDLE_SCHEMA; values as received.

        Sources do not clean: a corrupt value arrives as null or as itself, and bronze quarantines it.
        """
        ...


def empty_candles() -> pl.DataFrame:
    return pl.DataFrame(schema=CANDLE_SCHEMA)


def within(frame: pl.DataFrame, start: datetime, end: datetime) -> pl.DataFrame:
    """Rows with open time in [start, end), cast to the canonical schema."""
    frame = frame.select(CANDLE_COLUMNS).cast(CANDLE_SCHEMA)  # type: ignore[arg-type]
    return frame.filter(pl.col("timestamp").is_between(as_utc(start), as_utc(end), closed="left"))
