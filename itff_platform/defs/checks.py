"""Asset-check results computed from the pandera schemas on the frames an asset just wrote.

Checked inline, on the rows in memory, so a check costs no second read of the table."""

from __future__ import annotations

import polars as pl
from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, MetadataValue

# pandera check name -> the Dagster check it feeds.
BRONZE_CHECK_OF = {
    "multiple_fields_uniqueness": "no_duplicate_timestamps",
    "high_at_least_low": "ohlc_consistent",
    "body_within_range": "ohlc_consistent",
    "greater_than(0)": "positive_prices_and_volumes",
}
BRONZE_BLOCKING = ["bronze_schema", "no_duplicate_timestamps", "ohlc_consistent", "positive_prices_and_volumes", "counts_reconcile"]


def check_specs(asset: str, blocking: list[str], warning: list[str] = ()) -> list[AssetCheckSpec]:
    return [AssetCheckSpec(name, asset=asset, blocking=True) for name in blocking] + [
        AssetCheckSpec(name, asset=asset) for name in warning
    ]


def markdown_table(frame: pl.DataFrame, max_rows: int = 50) -> MetadataValue:
    if frame.is_empty():
        return MetadataValue.md("none")
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + "---|" * frame.width]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.head(max_rows).iter_rows()]
    if frame.height > max_rows:
        lines.append(f"\n{frame.height - max_rows} more row(s) not shown")
    return MetadataValue.md("\n".join(lines))


def schema_check_results(failures: pl.DataFrame, names: list[str], catch_all: str, mapping: dict[str, str]) -> list[AssetCheckResult]:
    """Bucket pandera failures into named checks; anything unmapped fails the catch-all schema check."""
    bucket = failures.with_columns(pl.col("check").replace_strict(mapping, default=catch_all).alias("asset_check"))
    results = []
    for name in names:
        mine = bucket.filter(pl.col("asset_check") == name)
        results.append(
            AssetCheckResult(
                check_name=name,
                passed=mine.height == 0,
                metadata={"failed_rows": int(mine["failed_rows"].sum()) if mine.height else 0, "failures": markdown_table(mine.drop("asset_check"))},
            )
        )
    return results


def gap_check_result(gaps: pl.DataFrame, tolerance_bars: int) -> AssetCheckResult:
    ranges = gaps.select(
        "symbol",
        pl.col("gap_after").dt.to_string("%Y-%m-%d %H:%M").alias("last_bar_before"),
        pl.col("gap_before").dt.to_string("%Y-%m-%d %H:%M").alias("first_bar_after"),
        "missing_bars",
    )
    return AssetCheckResult(
        check_name="no_unexpected_gaps",
        passed=gaps.height == 0,
        severity=AssetCheckSeverity.WARN,
        description=f"Runs of more than {tolerance_bars} missing bar(s). Exchange outages are real; this warns, it does not block.",
        metadata={
            "gap_count": gaps.height,
            "missing_bars": int(gaps["missing_bars"].sum()) if gaps.height else 0,
            "gaps": markdown_table(ranges),
        },
    )
