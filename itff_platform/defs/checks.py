"""Asset-check results computed from the pandera schemas on the frames an asset just wrote.

Checked inline, on the rows in memory, so a check costs no second read of the table."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import polars as pl
from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, MetadataValue

from itff_platform import markdown

# pandera check name -> the Dagster check it feeds.
BRONZE_CHECK_OF = {
    "multiple_fields_uniqueness": "no_duplicate_timestamps",
    "high_at_least_low": "ohlc_consistent",
    "body_within_range": "ohlc_consistent",
    "greater_than(0)": "positive_prices_and_volumes",
}
BRONZE_BLOCKING = [
    "bronze_schema",
    "no_duplicate_timestamps",
    "ohlc_consistent",
    "positive_prices_and_volumes",
    "counts_reconcile",
]


# What each check asks, as the UI shows it under the asset (the asset's owners answer for its checks).
CHECK_DESCRIPTIONS = {
    "raw_schema": "Raw rows have the columns and types of the pandera schema RawCandles, lineage included (source, "
    "ingested_at, batch_id); values are kept as received.",
    "no_rows_out_of_range": "Rows outside the lake's months are quarantined (rule out_of_range) as designed and pass; "
    "rows stamped in the future warn.",
    "no_rejected_files": "No drop file was set aside into rejected/ this run (ERROR, not blocking: other files go on).",
    "bronze_schema": "Bronze rows satisfy the pandera schema BronzeCandles; failures not named by another check land here.",
    "no_duplicate_timestamps": "One row per (interval, symbol, timestamp).",
    "ohlc_consistent": "high >= low, and the open and close lie within [low, high].",
    "positive_prices_and_volumes": "Every price and volume is > 0.",
    "counts_reconcile": "raw rows = bronze + quarantined + collapsed exact duplicates: no row lost unseen.",
    "no_unexpected_gaps": "No run of missing bars outside the exchange outages on record; those inside pass, listed.",
    "price_continuity": "No bar jumps more than ITFF_CONTINUITY_ATR_MULTIPLE ATRs from the previous close (a wrong "
    "symbol's or rescaled file); warns, never blocks.",
    "silver_schema": "Silver rows satisfy the pandera schema SilverFeatures: indicator ranges, regimes, 0/1 labels, "
    "one row per bar. Blocks training.",
}


def check_specs(asset: str, blocking: list[str], warning: Sequence[str] = ()) -> list[AssetCheckSpec]:
    return [
        AssetCheckSpec(name, asset=asset, blocking=True, description=CHECK_DESCRIPTIONS[name]) for name in blocking
    ] + [AssetCheckSpec(name, asset=asset, description=CHECK_DESCRIPTIONS[name]) for name in warning]


def markdown_table(frame: pl.DataFrame, max_rows: int = markdown.TABLE_ROWS_SHOWN) -> MetadataValue:
    return MetadataValue.md(markdown.table(frame, max_rows))


def schema_check_results(
    failures: pl.DataFrame, names: list[str], catch_all: str, mapping: dict[str, str]
) -> list[AssetCheckResult]:
    """Bucket pandera failures into named checks; anything unmapped fails the catch-all schema check."""
    bucket = failures.with_columns(pl.col("check").replace_strict(mapping, default=catch_all).alias("asset_check"))
    results = []
    for name in names:
        mine = bucket.filter(pl.col("asset_check") == name)
        results.append(
            AssetCheckResult(
                check_name=name,
                passed=mine.height == 0,
                metadata={
                    "failed_rows": int(mine["failed_rows"].sum()) if mine.height else 0,
                    "failures": markdown_table(mine.drop("asset_check")),
                },
            )
        )
    return results


def gap_check_result(gaps: pl.DataFrame, tolerance_bars: int) -> AssetCheckResult:
    """`gaps` carries `known_outage` (market.outages.explain_gaps). Gaps inside an exchange outage on record are the
    documented, expected outcome: they pass, listed. Any other gap warns."""
    ranges = gaps.select(
        "symbol",
        pl.col("gap_after").dt.to_string("%Y-%m-%d %H:%M").alias("last_bar_before"),
        pl.col("gap_before").dt.to_string("%Y-%m-%d %H:%M").alias("first_bar_after"),
        "missing_bars",
        pl.when(pl.col("known_outage"))
        .then(pl.lit("exchange outage on record"))
        .otherwise(pl.lit("UNEXPECTED"))
        .alias("explained"),
    )
    unexpected = gaps.filter(~pl.col("known_outage"))
    return AssetCheckResult(
        check_name="no_unexpected_gaps",
        passed=unexpected.is_empty(),
        severity=AssetCheckSeverity.WARN,
        description=f"Runs of more than {tolerance_bars} missing bar(s) outside the exchange outages on record "
        "(itff_platform/market/outages.py). Gaps inside them are real and pass, listed; others warn, never block.",
        metadata={
            "gap_count": gaps.height,
            "known_outage_gaps": gaps.height - unexpected.height,
            "unexpected_gaps": unexpected.height,
            "missing_bars": int(gaps["missing_bars"].sum()) if gaps.height else 0,
            "gaps": markdown_table(ranges),
        },
    )


def rejected_files_check_result(rejected: list[dict]) -> AssetCheckResult:
    """Files set aside into the drop folder's rejected/ this run. Fails (ERROR) but does not block: the other
    files and symbols went on."""
    table = pl.DataFrame(
        rejected,
        schema={"file": pl.String, "field": pl.String, "rule": pl.String, "moved_to": pl.String, "message": pl.String},
    )
    return AssetCheckResult(
        check_name="no_rejected_files",
        passed=table.is_empty(),
        severity=AssetCheckSeverity.ERROR,
        description="Each rejected file lies in rejected/ beside <file>.reason.txt; fix it and drop it again.",
        metadata={
            "rejected_files": table.height,
            "files": markdown_table(table.drop("message")),
            "reasons": MetadataValue.json({r["file"]: r["message"] for r in rejected}),
        },
    )


def out_of_range_check_result(out_of_range: pl.DataFrame, first_month: str, end: str) -> AssetCheckResult:
    """Rows outside the lake's months are quarantined as designed (a vendor's file may hold years the lake does not):
    that passes, with counts per file. Rows stamped in the future cannot be candles: they warn."""
    future = out_of_range.filter(pl.col("timestamp") > datetime.now(UTC))
    by_file = (
        out_of_range.group_by("symbol", "file")
        .agg(
            pl.len().alias("rows"),
            (pl.col("timestamp") > datetime.now(UTC)).sum().alias("in_the_future"),
            pl.col("timestamp").min().dt.to_string("%Y-%m-%d %H:%M").alias("first"),
            pl.col("timestamp").max().dt.to_string("%Y-%m-%d %H:%M").alias("last"),
        )
        .sort("symbol", "file", nulls_last=True)
        if out_of_range.height
        else pl.DataFrame()
    )
    return AssetCheckResult(
        check_name="no_rows_out_of_range",
        passed=future.is_empty(),
        severity=AssetCheckSeverity.WARN,
        description=f"Rows outside the lake's months [{first_month}, {end}) are kept in quarantine with rule out_of_range, "
        "as designed: that passes. Rows stamped in the future warn: the file's clock or format is wrong.",
        metadata={
            "out_of_range_rows": out_of_range.height,
            "future_rows": future.height,
            "rows_by_file": markdown_table(by_file),
        },
    )


def continuity_check_result(breaks: pl.DataFrame, atr_multiple: float, gaps: pl.DataFrame) -> AssetCheckResult:
    """A jump on the first bar after an exchange outage on record (`gaps` with known_outage) is the market moving while
    the exchange was down: expected, listed, passing. Any other break warns."""
    reopened = gaps.filter(pl.col("known_outage")).select(
        "symbol", pl.col("gap_before").alias("timestamp"), pl.lit(True).alias("after_outage")
    )
    judged = breaks.join(reopened, on=["symbol", "timestamp"], how="left").with_columns(
        pl.col("after_outage").fill_null(False)
    )
    rows = judged.select(
        "symbol",
        pl.col("timestamp").dt.to_string("%Y-%m-%d %H:%M").alias("timestamp"),
        "previous_close",
        "open",
        "close",
        pl.col("ratio").round(4),
        pl.col("atr_multiple").round(1),
        "after_outage",
    )
    unexplained = judged.filter(~pl.col("after_outage"))
    return AssetCheckResult(
        check_name="price_continuity",
        passed=unexplained.is_empty(),
        severity=AssetCheckSeverity.WARN,
        description=f"Bars more than {atr_multiple:g} ATRs from the previous close: a wrong symbol's or a rescaled file, "
        "or a real shock. Warns, does not block: verify the named bars. The first bar after an exchange "
        "outage on record passes, listed.",
        metadata={
            "breaks": unexplained.height,
            "breaks_after_outages": judged.height - unexplained.height,
            "rows": markdown_table(rows),
        },
    )


def silver_freshness_check_result(stale: pl.DataFrame) -> AssetCheckResult:
    keys = [f"{m:%Y-%m-%d}|{s}" for s, m in stale.select("symbol", "month").iter_rows()]
    table = stale.with_columns(
        pl.col("bronze_last_bar").dt.to_string("%Y-%m-%d %H:%M"),
        pl.col("silver_last_bar").dt.to_string("%Y-%m-%d %H:%M"),
    )
    return AssetCheckResult(
        check_name="silver_matches_bronze",
        passed=stale.is_empty(),
        severity=AssetCheckSeverity.ERROR,
        description="Silver partitions whose rows differ from bronze's (a run stopped between the two). "
        "Re-run lake_job (or silver_features) for the partitions listed.",
        metadata={
            "stale_partitions": stale.height,
            "partitions_to_rerun": MetadataValue.json(keys),
            "stale": markdown_table(table),
        },
    )
