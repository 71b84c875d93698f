"""raw_candles -> bronze_candles -> silver_features. Thin: each asset calls lake.layers and reports."""

from typing import cast

import polars as pl
from dagster import (
    AssetCheckResult,
    AssetDep,
    AssetExecutionContext,
    BackfillPolicy,
    DimensionPartitionMapping,
    IdentityPartitionMapping,
    MaterializeResult,
    MetadataValue,
    MultiPartitionMapping,
    MultiPartitionsDefinition,
    TimeWindowPartitionMapping,
    asset,
    asset_check,
)

from itff_platform.defs.checks import (
    BRONZE_BLOCKING,
    BRONZE_CHECK_OF,
    check_specs,
    continuity_check_result,
    gap_check_result,
    markdown_table,
    out_of_range_check_result,
    rejected_files_check_result,
    schema_check_results,
    silver_freshness_check_result,
)
from itff_platform.defs.metadata import (
    OWNERS,
    in_partition,
    partition_table_metadata,
    rows_in,
    table_schema,
)
from itff_platform.defs.partitions import (
    lake_partitions,
    months_by_symbol,
    symbol_and_month,
)
from itff_platform.defs.resources import ItffSettingsResource
from itff_platform.lake.cleaning import BronzeResult
from itff_platform.lake.schemas import BronzeCandles, RawCandles, SilverFeatures
from itff_platform.settings import Settings

# Silver for month M reads the warm-up from M-1 and the label horizon from M+1.
NEIGHBOURS = MultiPartitionMapping(
    {
        "symbol": DimensionPartitionMapping("symbol", IdentityPartitionMapping()),
        "month": DimensionPartitionMapping(
            "month",
            TimeWindowPartitionMapping(start_offset=-1, end_offset=1, allow_nonexistent_upstream_partitions=True),
        ),
    }
)


def lake_assets(settings: Settings) -> list:
    partitions = lake_partitions(settings)
    return [
        raw_candles_asset(partitions),
        bronze_candles_asset(partitions),
        silver_features_asset(partitions),
        silver_matches_bronze,
    ]


# --- raw_candles
def raw_candles_asset(partitions: MultiPartitionsDefinition):
    @asset(
        partitions_def=partitions,
        backfill_policy=BackfillPolicy.single_run(),
        group_name="lake",
        kinds={"delta", "polars"},
        check_specs=[*check_specs("raw_candles", ["raw_schema"], ["no_rows_out_of_range", "no_rejected_files"])],
        owners=OWNERS,
        metadata={"dagster/column_schema": table_schema(RawCandles)},
        description="Candles as received from the configured source, with source, ingested_at and batch_id. "
        "Unusable drop files are set aside into rejected/; rows outside the lake's months go to quarantine.",
    )
    def raw_candles(context: AssetExecutionContext, itff: ItffSettingsResource) -> MaterializeResult:
        from itff_platform.lake.layers import LakeTables

        cfg, source = itff.settings(), itff.candle_source()
        ingests = ingest_symbols(context, cfg, source)
        mark_unchanged(context, ingests)
        for key, meta in partition_metadata(context, LakeTables.under(cfg).raw, cfg.interval).items():
            context.add_asset_metadata(meta, partition_key=key)
        return raw_result(context, cfg, source.name, ingests)

    return raw_candles


def ingest_symbols(context: AssetExecutionContext, cfg: Settings, source) -> dict:
    """Each symbol's months of the run fetched into raw, with what was set aside or kept logged."""
    from itff_platform.lake.layers import ingest_raw

    ingests = {}
    for symbol, months in months_by_symbol(context.partition_keys).items():
        context.log.info(f"fetching {symbol} {cfg.interval} for {len(months)} month(s) from {source.name}")
        ingests[symbol] = ingest = ingest_raw(source, cfg, symbol, months, skip_unchanged=True)
        for rejected in ingest.rejected:
            context.log.error(f"{symbol}: set aside {rejected.file} -> {rejected.moved_to}: {rejected.message}")
        if ingest.kept_months:
            context.log.warning(
                f"{symbol}: kept the lake's raw rows for {ingest.kept_months}: their only files were rejected"
            )
        if ingest.out_of_range.height:
            context.log.warning(
                f"{symbol}: {ingest.out_of_range.height} row(s) outside the lake's months quarantined as out_of_range"
            )
    return ingests


def raw_result(context: AssetExecutionContext, cfg: Settings, source: str, ingests: dict) -> MaterializeResult:
    """The run's figures: what the source handed over for all of the run's partitions (run_partitions of them), and
    the raw checks."""
    from itff_platform.lake.layers import lake_months
    from itff_platform.lake.schemas import schema_failures

    raw = pl.concat([i.raw for i in ingests.values()])
    out_of_range = pl.concat([i.out_of_range for i in ingests.values()])
    rejected = [r.as_row() for i in ingests.values() for r in i.rejected]
    other = pl.concat([i.other_months.with_columns(pl.lit(s).alias("symbol")) for s, i in ingests.items()])
    first, end = lake_months(cfg)
    return MaterializeResult(
        metadata={
            "dagster/column_schema": table_schema(RawCandles, raw.schema),
            "source": source,
            "run_partitions": len(context.partition_keys),
            "run_rows_received": sum(i.received for i in ingests.values()),
            "run_rows_for_other_months": int(other["rows"].sum()) if other.height else 0,
            "run_other_months": markdown_table(other.select("symbol", pl.col("month").cast(pl.String), "rows")),
            "run_out_of_range_rows": out_of_range.height,
            "run_rejected_files": MetadataValue.json([r["file"] for r in rejected]),
            "run_received_reconciles": all(i.reconciles for i in ingests.values()),
        },
        check_results=[
            *schema_check_results(schema_failures(RawCandles, raw), ["raw_schema"], "raw_schema", {}),
            rejected_files_check_result(rejected),
            out_of_range_check_result(out_of_range, f"{first}", f"{end}"),
        ],
    )


# --- bronze_candles
def bronze_candles_asset(partitions: MultiPartitionsDefinition):
    @asset(
        partitions_def=partitions,
        backfill_policy=BackfillPolicy.single_run(),
        deps=["raw_candles"],
        group_name="lake",
        kinds={"delta", "pandera"},
        check_specs=check_specs("bronze_candles", BRONZE_BLOCKING, ["no_unexpected_gaps", "price_continuity"]),
        description="Typed, deduplicated, sorted, validated candles. Rejected rows go to bronze/quarantine with their rule.",
        owners=OWNERS,
        metadata={"dagster/column_schema": table_schema(BronzeCandles)},
    )
    def bronze_candles(context: AssetExecutionContext, itff: ItffSettingsResource) -> MaterializeResult:
        from itff_platform.lake.layers import LakeTables, build_bronze
        from itff_platform.lake.partition_stats import table_uri
        from itff_platform.lake.schemas import QuarantinedCandles
        from itff_platform.market.outages import explain_gaps

        cfg = itff.settings()
        reports = {
            symbol: build_bronze(cfg, symbol, months, skip_unchanged=True)
            for symbol, months in months_by_symbol(context.partition_keys).items()
        }
        mark_unchanged(context, reports)
        for symbol, report in reports.items():
            context.log.info(
                f"{symbol}: raw {report.result.raw_rows} = bronze {report.result.bronze.height} + quarantined "
                f"{report.result.quarantine.height} + collapsed duplicates {report.result.collapsed_duplicates}"
            )
        gaps = explain_gaps(pl.concat([r.gaps for r in reports.values()]), cfg.interval_seconds)
        breaks = pl.concat([r.breaks for r in reports.values()])
        tables = LakeTables.under(cfg)
        for key, meta in _bronze_partition_metadata(context, tables, cfg.interval, reports, gaps, breaks).items():
            context.add_asset_metadata(meta, partition_key=key)
        result = BronzeResult.combined(r.result for r in reports.values())
        return MaterializeResult(
            metadata={
                "dagster/column_schema": table_schema(BronzeCandles, result.bronze.schema),
                "quarantine_uri": table_uri(tables.quarantine),
                "quarantine_column_schema": table_schema(QuarantinedCandles),
            },
            check_results=bronze_check_results(cfg, result, gaps, breaks),
        )

    return bronze_candles


def bronze_check_results(cfg: Settings, result: BronzeResult, gaps: pl.DataFrame, breaks: pl.DataFrame) -> list:
    """The schema checks, raw = bronze + quarantined + collapsed duplicates, gaps and price continuity."""
    from itff_platform.lake.schemas import schema_failures

    checks = schema_check_results(
        schema_failures(BronzeCandles, result.bronze), BRONZE_BLOCKING[:-1], "bronze_schema", BRONZE_CHECK_OF
    )
    checks.append(
        AssetCheckResult(
            check_name="counts_reconcile",
            passed=result.reconciles,
            metadata={
                "raw": result.raw_rows,
                "bronze": result.bronze.height,
                "quarantined": result.quarantine.height,
                "collapsed_duplicates": result.collapsed_duplicates,
            },
        )
    )
    checks.append(gap_check_result(gaps, cfg.lake.gap_tolerance_bars))
    checks.append(continuity_check_result(breaks, cfg.lake.continuity_atr_multiple, gaps))
    return checks


# --- silver_features
def silver_features_asset(partitions: MultiPartitionsDefinition):
    @asset(
        partitions_def=partitions,
        backfill_policy=BackfillPolicy.single_run(),
        deps=[AssetDep("bronze_candles", partition_mapping=NEIGHBOURS)],
        group_name="lake",
        kinds={"delta", "polars"},
        check_specs=check_specs("silver_features", ["silver_schema"]),
        description="Features, market regime and labels per bar, computed from an anchored window of bronze.",
        owners=OWNERS,
        metadata={"dagster/column_schema": table_schema(SilverFeatures)},
    )
    def silver_features(context: AssetExecutionContext, itff: ItffSettingsResource) -> MaterializeResult:
        from itff_platform.features.silver import feature_columns
        from itff_platform.lake.layers import LakeTables, refresh_silver
        from itff_platform.lake.schemas import SILVER_CHECKED, schema_failures

        cfg = itff.settings()
        refreshed = {}
        for symbol, months in months_by_symbol(context.partition_keys).items():
            refreshed[symbol] = refresh_silver(cfg, symbol, months, skip_unchanged=True, columns=SILVER_CHECKED)
            context.log.info(
                f"{symbol}: {refreshed[symbol].rows.height} silver rows for {len(months)} month(s), "
                f"{len(refreshed[symbol].unchanged)} of them unchanged (same bronze, settings and code), not rebuilt"
            )
        silver = pl.concat([r.rows for r in refreshed.values()])
        for key, meta in partition_metadata(context, LakeTables.under(cfg).silver, cfg.interval).items():
            context.add_asset_metadata(meta | _silver_partition_metadata(in_partition(silver, key)), partition_key=key)
        mark_unchanged(context, refreshed)
        return MaterializeResult(
            metadata={
                "dagster/column_schema": table_schema(SilverFeatures, next(iter(refreshed.values())).schema),
                "features": MetadataValue.json(feature_columns(cfg)),
                "label_horizon_bars": cfg.features.label_horizon,
            },
            check_results=schema_check_results(
                schema_failures(SilverFeatures, silver), ["silver_schema"], "silver_schema", {}
            ),
        )

    return silver_features


@asset_check(
    asset="silver_features",
    description="Every (symbol, month) of silver holds the rows bronze holds: catches silver left behind by a run "
    "stopped between bronze and silver. Runs with every lake_job and with lake_maintenance.",
)
def silver_matches_bronze(itff: ItffSettingsResource) -> AssetCheckResult:
    from itff_platform.lake.freshness import stale_silver
    from itff_platform.lake.layers import LakeTables

    cfg = itff.settings()
    tables = LakeTables.under(cfg)
    return silver_freshness_check_result(stale_silver(tables.bronze, tables.silver, cfg.interval))


def maintenance_assets(settings: Settings) -> list:
    """lake_maintenance: compact, vacuum and checkpoint every lake table, with bytes reclaimed in the metadata."""

    @asset(
        group_name="lake",
        kinds={"delta"},
        owners=OWNERS,
        description=f"Compacts small files, deletes Parquet files the lake stopped using once older than "
        f"ITFF_LAKE_VACUUM_RETENTION_HOURS ({settings.lake.vacuum_retention_hours} h), checkpoints. "
        "Reports bytes before, after and reclaimed per table.",
    )
    def lake_maintenance(context: AssetExecutionContext, itff: ItffSettingsResource) -> MaterializeResult:
        from itff_platform.lake.layers import LakeTables
        from itff_platform.lake.maintenance import maintain_tables

        cfg = itff.settings()
        done = maintain_tables(vars(LakeTables.under(cfg)), cfg.lake.vacuum_retention_hours)
        rows = pl.DataFrame(
            [{"table": name, **{k: v for k, v in r.as_row().items() if k != "table"}} for name, r in done.items()]
        )
        for name, r in done.items():
            context.log.info(
                f"{name}: {r.bytes_before} -> {r.bytes_after} bytes, {r.files_vacuumed} file(s) vacuumed, "
                f"{r.files_compacted} compacted into {r.files_added_by_compaction}"
            )
        return MaterializeResult(
            metadata={
                "retention_hours": cfg.lake.vacuum_retention_hours,
                "bytes_before": sum(r.bytes_before for r in done.values()),
                "bytes_after": sum(r.bytes_after for r in done.values()),
                "bytes_reclaimed": sum(r.bytes_reclaimed for r in done.values()),
                "files_vacuumed": sum(r.files_vacuumed for r in done.values()),
                "tables": markdown_table(rows),
            }
        )

    return [lake_maintenance]


def mark_unchanged(context: AssetExecutionContext, by_symbol: dict) -> None:
    """Each partition says whether it was left as it was (lake.incremental: the same inputs, settings and code)."""
    for key in context.partition_keys:
        symbol, month = symbol_and_month(key)
        context.add_asset_metadata({"unchanged": month in by_symbol[symbol].unchanged}, partition_key=key)


def partition_metadata(context: AssetExecutionContext, table: str, interval: str) -> dict:
    """Each partition of the run, with its own row count read back from the Delta log, the table's URI and the version
    written. A single-run backfill writes many (symbol, month) partitions: each shows its own figures, never the run's."""
    from itff_platform.lake.delta import table_version
    from itff_platform.lake.partition_stats import partition_rows, table_uri

    counts, uri, version = partition_rows(table, interval), table_uri(table), table_version(table)
    return {key: partition_table_metadata(counts, key, uri, version) for key in context.partition_keys}


def _bronze_partition_metadata(
    context: AssetExecutionContext, tables, interval: str, reports: dict, gaps: pl.DataFrame, breaks: pl.DataFrame
) -> dict:
    """Per partition: raw = bronze + quarantined + collapsed duplicates, from the tables as written, and the partition's
    quarantine rules, gaps and continuity breaks."""
    from itff_platform.lake.partition_stats import partition_rows

    raw_counts, quarantine_counts = partition_rows(tables.raw, interval), partition_rows(tables.quarantine, interval)
    metadata = {}
    for key, meta in partition_metadata(context, tables.bronze, interval).items():
        symbol, month = symbol_and_month(key)
        raw_rows, quarantined = rows_in(raw_counts, key), rows_in(quarantine_counts, key)
        metadata[key] = meta | {
            "raw_rows": raw_rows,
            "quarantined_rows": quarantined,
            "collapsed_exact_duplicates": raw_rows - meta["dagster/row_count"] - quarantined,
            "quarantine_rules": markdown_table(reports[symbol].result.rule_counts(month)),
            "gap_count": in_partition(gaps, key, "gap_before").height,
            "continuity_breaks": in_partition(breaks, key, "timestamp").height,
        }
    return metadata


def _silver_partition_metadata(part: pl.DataFrame) -> dict:
    """One (symbol, month) partition's regimes and label balance."""
    labelled = part.filter(pl.col("direction").is_not_null())
    return {
        "regimes": markdown_table(part.group_by("regime").len().sort("regime")),
        "direction_up_share": float(cast(float, labelled["direction"].mean())) if labelled.height else 0.0,
        "level_up_share": float(cast(float | None, part["level_up"].drop_nulls().mean()) or 0.0),
    }
