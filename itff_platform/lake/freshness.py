"""Is silver up to date with bronze? Compared partition by partition, on content, not on clocks.

A run killed between bronze's commit and silver's leaves silver holding the old rows of that month (or none).
Each (symbol, month) is fingerprinted in both tables from the columns they share: row count, first and last bar,
and the sum of closes in time order. Silver is stale where a fingerprint differs or is missing on either side.
Rebuilding silver for the stale partitions (a re-run of them) brings it level.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
from deltalake import DeltaTable

FINGERPRINT = ["rows", "first_bar", "last_bar", "close_sum"]


def partition_fingerprints(path: str | Path, interval: str) -> pl.DataFrame:
    """One row per (symbol, month): rows, first_bar, last_bar, close_sum. Reads four columns, not the table."""
    schema = pl.Schema(
        {
            "symbol": pl.String(),
            "month": pl.Date(),
            "rows": pl.UInt32(),
            "first_bar": pl.Datetime("us", "UTC"),
            "last_bar": pl.Datetime("us", "UTC"),
            "close_sum": pl.Float64(),
        }
    )
    if not DeltaTable.is_deltatable(str(path)):
        return pl.DataFrame(schema=schema)
    return (
        pl.scan_delta(str(path))
        .filter(pl.col("interval") == interval)
        .select("symbol", "month", "timestamp", "close")
        .group_by("symbol", "month")
        .agg(
            pl.len().alias("rows"),
            pl.col("timestamp").min().alias("first_bar"),
            pl.col("timestamp").max().alias("last_bar"),
            # Summed in time order, so the same rows always give the same float, whatever order the files are read in.
            pl.col("close").sort_by("timestamp").sum().alias("close_sum"),
        )
        .collect()
        .cast(schema)
        .sort("symbol", "month")
    )


def stale_silver(bronze_path: str | Path, silver_path: str | Path, interval: str) -> pl.DataFrame:
    """The (symbol, month) partitions where silver does not hold what bronze holds, with both fingerprints and why."""
    bronze = partition_fingerprints(bronze_path, interval)
    silver = partition_fingerprints(silver_path, interval)
    joined = bronze.join(silver, on=["symbol", "month"], how="full", coalesce=True, suffix="_silver")
    b = pl.col

    def s(name: str) -> pl.Expr:
        return pl.col(f"{name}_silver")

    reason = (
        pl.when(b("rows").is_null())
        .then(pl.lit("silver has rows bronze no longer holds"))
        .when(s("rows").is_null())
        .then(pl.lit("bronze rows have no silver"))
        .when(b("rows") != s("rows"))
        .then(pl.lit("row counts differ"))
        .when((b("first_bar") != s("first_bar")) | (b("last_bar") != s("last_bar")))
        .then(pl.lit("bar ranges differ"))
        .when((b("close_sum") - s("close_sum")).abs() > 1e-12 * b("close_sum").abs())
        .then(pl.lit("closes differ"))
    )
    return (
        joined.with_columns(reason.alias("reason"))
        .filter(pl.col("reason").is_not_null())
        .select(
            "symbol",
            "month",
            pl.col("rows").alias("bronze_rows"),
            s("rows").alias("silver_rows"),
            pl.col("last_bar").alias("bronze_last_bar"),
            s("last_bar").alias("silver_last_bar"),
            "reason",
        )
        .sort("symbol", "month")
    )
