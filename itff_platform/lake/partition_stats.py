"""What a Delta table holds per partition, read from its transaction log alone: no data file is opened."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from deltalake import DeltaTable


def partition_rows(path: str | Path, interval: str) -> pl.DataFrame:
    """symbol, month, rows: the live rows of each (symbol, month) of one interval, summed from the log's file
    statistics (every writer of the lake records numRecords). Empty when there is no table yet."""
    if not DeltaTable.is_deltatable(str(path)):
        return pl.DataFrame(schema={"symbol": pl.String, "month": pl.Date, "rows": pl.Int64})
    actions = pl.DataFrame(DeltaTable(str(path)).get_add_actions(flatten=True))
    return (
        actions.filter(pl.col("partition.interval") == interval)
        .group_by(pl.col("partition.symbol").alias("symbol"), pl.col("partition.month").cast(pl.Date).alias("month"))
        .agg(pl.col("num_records").sum().cast(pl.Int64).alias("rows"))
        .sort("symbol", "month")
    )


def table_uri(path: str | Path) -> str:
    return Path(path).resolve().as_uri()
