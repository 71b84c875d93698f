"""What paper trading reads from the lake: the next bar's open (fills), the newest close (marks) and the
realized volatility (sizing), all from silver, the layer the models are served from."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import polars as pl
from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError

from itff_platform.lake.delta import read_rows
from itff_platform.lake.layers import LakeTables
from itff_platform.settings import Settings

RECENT_DAYS = 45  # how far back the newest bar is looked for: a month's partition and then some


@dataclass(frozen=True)
class Quote:
    price: float
    bar_time: datetime  # the bar whose price it is
    source: str  # "next_open", "newest_close" or "request"


class LakePrices:
    """Prices of the served symbols from silver. Without a lake every lookup says None."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.path = LakeTables.under(settings).silver
        self.bar = timedelta(seconds=settings.interval_seconds)

    def _rows(self, symbol: str, start: datetime | None = None, end: datetime | None = None) -> pl.DataFrame:
        try:
            return read_rows(self.path, self.settings.interval, symbol, start, end)
        except FileNotFoundError:
            return pl.DataFrame()

    def newest(self, symbol: str, as_of: datetime | None = None) -> pl.DataFrame:
        """The symbol's bars of the last RECENT_DAYS up to `as_of` (now), oldest first."""
        end = as_of or datetime.now(UTC)
        rows = self._rows(symbol, end - timedelta(days=RECENT_DAYS), end)
        if rows.is_empty():  # a lake that stopped long ago (the packaged sample): the newest month it has
            newest = self._newest_month(symbol, end)
            rows = self._rows(symbol, newest, end) if newest is not None else rows
        return rows

    def _newest_month(self, symbol: str, end: datetime) -> datetime | None:
        """The first instant of the symbol's newest month partition that starts before `end`, from the Delta log's
        partition list: the files of that month are all that is read, never the whole history."""
        try:
            parts = DeltaTable(str(self.path)).partitions(
                [("interval", "=", self.settings.interval), ("symbol", "=", symbol)]
            )
        except TableNotFoundError:
            return None
        months = [datetime.fromisoformat(p["month"]).replace(tzinfo=UTC) for p in parts]
        return max((m for m in months if m < end), default=None)

    def mark(self, symbol: str, as_of: datetime | None = None) -> Quote | None:
        """The close of the newest bar: what a position is marked at."""
        rows = self.newest(symbol, as_of)
        if rows.is_empty():
            return None
        return Quote(float(rows["close"][-1]), rows["timestamp"][-1], "newest_close")

    def fill_reference(self, symbol: str, decided_at: datetime | None) -> Quote | None:
        """The open of the bar after the one the order was decided on (`decided_at`, a bar's open time), as the
        backtest enters a trade at its decision bar's close. Without a decision bar, or when the next bar is not
        in the lake yet, the newest close: the last price known, which is the next open on a gapless market."""
        if decided_at is not None:
            start = decided_at + self.bar
            rows = self._rows(symbol, start, start + self.bar)
            if rows.height:
                return Quote(float(rows["open"][0]), rows["timestamp"][0], "next_open")
        return self.mark(symbol, decided_at + self.bar if decided_at is not None else None)

    def annualised_vol(self, symbol: str, as_of: datetime | None = None) -> float | None:
        """silver's realized_vol of the newest bar (over ITFF_VOLATILITY_WINDOW bars), annualised (24/7 market)."""
        rows = self.newest(symbol, as_of)
        if rows.is_empty() or "realized_vol" not in rows.columns:
            return None
        window = rows["realized_vol"].drop_nulls().drop_nans()
        if window.is_empty():
            return None
        bars_per_year = 365 * 86400 / self.settings.interval_seconds
        value = float(window[-1]) * math.sqrt(bars_per_year / self.settings.features.volatility_window)
        return value if math.isfinite(value) and value > 0 else None
