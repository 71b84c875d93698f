"""Delta tables scoped to partitions.

Every table is partitioned by (interval, symbol, month). `month` is a Date, not a string: the overwrite
predicate then compares like with like, and a rewrite of one month can never widen into the whole table.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime
from pathlib import Path

import polars as pl
from deltalake import DeltaTable, write_deltalake

PARTITION_COLUMNS = ["interval", "symbol", "month"]


def with_month(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns(pl.col("timestamp").dt.truncate("1mo").dt.date().alias("month"))


def partition_predicate(interval: str, symbol: str, months: Iterable[date], since: datetime | None = None) -> str:
    months = sorted(set(months))
    # Column names are quoted: `interval` is an SQL keyword. Months compare as DATE literals.
    month_list = ", ".join(f"DATE '{m:%Y-%m-%d}'" for m in months)
    predicate = f"\"interval\" = '{interval}' AND \"symbol\" = '{symbol}' AND \"month\" IN ({month_list})"
    if since is not None:
        # Rows from `since` on, within those months: a daily update rewrites one day, not the month.
        predicate += f" AND \"timestamp\" >= TIMESTAMP '{since:%Y-%m-%dT%H:%M:%S}Z'"
    return predicate


def replace_partitions(
    path: str | Path, frame: pl.DataFrame, interval: str, symbol: str, months: Iterable[date], since: datetime | None = None
) -> None:
    """Replace exactly the rows of (interval, symbol, months[, timestamp >= since]) with `frame`, in one commit.

    Rows outside the predicate are untouched, files included. An empty frame empties those partitions."""
    months = list(months)
    if not months:
        return
    predicate = partition_predicate(interval, symbol, months, since)
    if not DeltaTable.is_deltatable(str(path)):
        if frame.is_empty():
            return
        write_deltalake(str(path), frame.to_arrow(), mode="append", partition_by=PARTITION_COLUMNS)
        return
    if frame.is_empty():
        DeltaTable(str(path)).delete(predicate)
        return
    write_deltalake(str(path), frame.to_arrow(), mode="overwrite", predicate=predicate, partition_by=PARTITION_COLUMNS)


def read_rows(
    path: str | Path, interval: str, symbol: str | None = None, start: datetime | None = None, end: datetime | None = None
) -> pl.DataFrame:
    """Rows of one interval (and symbol) with timestamp in [start, end); month filters prune files first."""
    if not DeltaTable.is_deltatable(str(path)):
        raise FileNotFoundError(f"{path}: no Delta table here yet; materialize the upstream asset first")
    scan = pl.scan_delta(str(path)).filter(pl.col("interval") == interval)
    if symbol is not None:
        scan = scan.filter(pl.col("symbol") == symbol)
    if start is not None:
        scan = scan.filter(pl.col("month") >= start.replace(day=1).date(), pl.col("timestamp") >= start)
    if end is not None:
        scan = scan.filter(pl.col("month") <= end.date(), pl.col("timestamp") < end)
    return scan.sort("symbol", "timestamp").collect()


def table_version(path: str | Path) -> int | None:
    return DeltaTable(str(path)).version() if DeltaTable.is_deltatable(str(path)) else None
