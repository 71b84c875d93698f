"""The paper account's ledger: one Delta table of events (order intents, fills with the position and cash after
them, abandoned orders, risk locks and resets), appended under an exclusive lock.

Why a lock as well as Delta's ACID commits: an order is check-then-act (is this key new? is there room under the
cap?) and the service runs several worker processes. `flock` on a lock file serializes that whole step across
processes and threads; the kernel drops the lock of a process that dies, so a `kill -9` never wedges it. Each
event is one Delta commit, visible whole or not at all, on disk before the HTTP answer is sent.

An order's intent is committed before it is filled, and its fill is committed before it is acknowledged. Every
intent is resolved (filled or abandoned) while its process holds the lock, so an intent still pending when the
lock is taken again belongs to a process that died mid-order: it is abandoned, never filled later."""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
from deltalake import DeltaTable

from itff_platform.lake.delta import durable_append

UTC_TIME = pl.Datetime("us", "UTC")
SCHEMA: dict[str, Any] = {
    "seq": pl.Int64,  # event number, in commit order
    "kind": pl.String,  # open (the first: the starting cash) | order | fill | abandon | lock | reset
    "order_id": pl.String,
    "idempotency_key": pl.String,
    "body_sha256": pl.String,  # of the request, so a reused key with another body is caught
    "symbol": pl.String,
    "side": pl.String,
    "mode": pl.String,
    "status": pl.String,  # pending (order), filled (fill), abandoned (abandon)
    "confidence": pl.Float64,
    "requested_usd": pl.Float64,
    "sized_usd": pl.Float64,  # after confidence and volatility scaling
    "clipped_usd": pl.Float64,  # taken off by the per-symbol cap
    "vol_scale": pl.Float64,
    "annualised_vol": pl.Float64,
    "decided_bar": UTC_TIME,  # the bar the order was decided on, when given
    "reference_price": pl.Float64,  # before slippage
    "price_source": pl.String,  # next_open | newest_close | request
    "price_bar": UTC_TIME,
    "price": pl.Float64,  # the fill price, after slippage
    "quantity": pl.Float64,  # units, signed
    "notional_usd": pl.Float64,  # signed like quantity
    "fee_usd": pl.Float64,
    "slippage_bps": pl.Float64,
    "cash_after": pl.Float64,
    "position_after": pl.Float64,  # the symbol's units after the fill: the positions, event by event
    "equity_after": pl.Float64,  # marked to market right after the event
    "message": pl.String,
    "recorded_at": UTC_TIME,
}
TERMINAL = ("fill", "abandon")


@dataclass(frozen=True)
class Book:
    """The ledger's state as of one Delta version. `configured_cash`: ITFF_PAPER_CASH, what a new ledger opens
    with; once the ledger has its `open` event, the cash recorded there is the starting cash, whatever the
    setting says now, so changing the setting never rewrites the account's history."""

    events: pl.DataFrame
    configured_cash: float

    @property
    def opening(self) -> dict[str, Any] | None:
        opened = self.events.filter(pl.col("kind") == "open")
        return opened.row(0, named=True) if opened.height else None

    @property
    def starting_cash(self) -> float:
        opening = self.opening
        return float(opening["cash_after"]) if opening is not None else self.configured_cash

    @property
    def next_seq(self) -> int:
        return int(self.events["seq"].max()) + 1 if self.events.height else 1  # type: ignore[arg-type]

    def fills(self) -> pl.DataFrame:
        return self.events.filter(pl.col("kind") == "fill")

    @property
    def cash(self) -> float:
        fills = self.fills()
        return self.starting_cash - float((fills["notional_usd"] + fills["fee_usd"]).sum())

    def positions(self) -> dict[str, float]:
        """Units held per symbol (short below zero); symbols that came back to flat are left out."""
        held = self.fills().group_by("symbol").agg(pl.col("quantity").sum()).filter(pl.col("quantity").abs() > 1e-12)
        return dict(zip(held["symbol"].to_list(), held["quantity"].to_list(), strict=True))

    def last_fill_prices(self) -> dict[str, float]:
        last = self.fills().group_by("symbol").agg(pl.col("price").sort_by("seq").last())
        return dict(zip(last["symbol"].to_list(), last["price"].to_list(), strict=True))

    def _since_reset(self) -> pl.DataFrame:
        resets = self.events.filter(pl.col("kind") == "reset")
        after = int(resets["seq"].max()) if resets.height else 0  # type: ignore[arg-type]
        return self.events.filter(pl.col("seq") > after)

    @property
    def baseline(self) -> float:
        """Equity the drawdown is measured from at first: the starting cash, or the equity at the last reset."""
        resets = self.events.filter(pl.col("kind") == "reset")
        return float(resets.sort("seq")["equity_after"][-1]) if resets.height else self.starting_cash

    @property
    def recorded_peak(self) -> float:
        """The highest equity recorded since the last reset (at a fill or the reset itself)."""
        marked = self._since_reset()["equity_after"].drop_nulls()
        return max(self.baseline, float(marked.max())) if len(marked) else self.baseline  # type: ignore[arg-type]

    @property
    def locked(self) -> bool:
        """A drawdown lock was recorded after the last reset: it holds until an admin resets it."""
        return bool((self._since_reset()["kind"] == "lock").any())

    def order(self, key: str) -> dict[str, Any] | None:
        """The order under this idempotency key, with its fill or abandonment merged in; None when new."""
        rows = self.events.filter(pl.col("idempotency_key") == key).sort("seq")
        if rows.is_empty():
            return None
        intent = rows.row(0, named=True)
        ends = rows.filter(pl.col("kind").is_in(TERMINAL))
        if ends.height:
            end = ends.row(0, named=True)
            intent = {**intent, **{k: v for k, v in end.items() if v is not None and k not in ("seq", "kind")}}
        return intent

    def pending(self) -> pl.DataFrame:
        """Intents with no fill and no abandonment."""
        done = self.events.filter(pl.col("kind").is_in(TERMINAL))["order_id"]
        return self.events.filter((pl.col("kind") == "order") & ~pl.col("order_id").is_in(done.implode()))

    def counts_by_status(self) -> dict[str, int]:
        """Orders by where they ended: filled, abandoned, pending."""
        pending = self.pending().height
        ends = self.events.filter(pl.col("kind").is_in(TERMINAL))["status"].value_counts()
        counts = dict(zip(ends["status"].to_list(), ends["count"].to_list(), strict=True))
        return {"filled": 0, "abandoned": 0, **counts, "pending": pending}


def event(kind: str, **values: Any) -> dict[str, Any]:
    return {**dict.fromkeys(SCHEMA), "kind": kind, "recorded_at": datetime.now(UTC), **values}


class Ledger:
    def __init__(self, folder: Path, starting_cash: float) -> None:
        self.folder, self.starting_cash = folder, starting_cash
        self.table = folder / "ledger"
        self._lock_file = folder / "ledger.lock"
        self._threads = threading.Lock()  # flock excludes other open files, threads included; this keeps it simple
        self._cache: tuple[int | None, Book] | None = None

    def read(self) -> Book:
        """The state as of the newest committed version (cached per version)."""
        if not DeltaTable.is_deltatable(str(self.table)):
            return Book(pl.DataFrame(schema=SCHEMA), self.starting_cash)
        # starting_cash is only what a new ledger opens with; an opened one carries its own (Book.starting_cash).
        version = DeltaTable(str(self.table)).version()
        if self._cache is None or self._cache[0] != version:
            frame = pl.read_delta(str(self.table), version=version).select(list(SCHEMA)).sort("seq")
            self._cache = (version, Book(frame, self.starting_cash))
        return self._cache[1]

    @contextmanager
    def locked(self) -> Iterator[Book]:
        """The ledger's state, with the right to append, until the block ends."""
        self.folder.mkdir(parents=True, exist_ok=True)
        with self._threads:
            fd = os.open(self._lock_file, os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield self.read()
            finally:
                os.close(fd)  # closing the last descriptor releases the lock

    def append(self, book: Book, *events: dict[str, Any]) -> Book:
        """Commit events (call inside `locked`); returns the state after them. A ledger's first commit opens it
        with the starting cash, as its own event."""
        if book.opening is None:
            cash = book.configured_cash
            events = (event("open", cash_after=cash, equity_after=cash, message="paper account opened"), *events)
        rows = [{**e, "seq": book.next_seq + i} for i, e in enumerate(events)]
        frame = pl.DataFrame(rows, schema=SCHEMA)
        durable_append(self.table, frame, SCHEMA)
        after = Book(pl.concat([book.events, frame]), book.configured_cash)
        # Under the lock nobody else wrote in between: the state after this commit is known, no re-read of the table.
        self._cache = (DeltaTable(str(self.table)).version(), after)
        return after
