"""The three lake layers as plain functions: fetch -> raw, raw -> bronze (+ quarantine), bronze -> silver.

Each takes one symbol and a list of month starts, reads what it needs and replaces exactly those
partitions. Dagster's assets call these; so do the CLI, the benchmark and the tests.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timezone

import polars as pl

from itff_platform.features.silver import build_features, month_windows, window_frames
from itff_platform.lake.cleaning import BronzeResult, clean_raw, find_gaps
from itff_platform.lake.delta import read_rows, replace_partitions, replace_partitions_by_files, table_version, with_month
from itff_platform.market.candles import CandleSource
from itff_platform.settings import Settings


@dataclass(frozen=True)
class LakeTables:
    raw: str
    bronze: str
    quarantine: str
    silver: str

    @classmethod
    def under(cls, settings: Settings) -> "LakeTables":
        root = settings.lake_dir
        return cls(
            raw=str(root / "raw" / "candles"),
            bronze=str(root / "bronze" / "candles"),
            quarantine=str(root / "bronze" / "quarantine"),
            silver=str(root / "silver" / "features"),
        )

    def versions(self) -> dict[str, int | None]:
        return {name: table_version(path) for name, path in vars(self).items()}


def month_start(day: date) -> datetime:
    return datetime(day.year, day.month, 1, tzinfo=timezone.utc)


def next_month(start: datetime) -> datetime:
    return datetime(start.year + start.month // 12, start.month % 12 + 1, 1, tzinfo=timezone.utc)


def ingest_raw(source: CandleSource, settings: Settings, symbol: str, months: list[datetime]) -> pl.DataFrame:
    """Fetch the months' candles as received and replace their raw partitions. Returns what was written."""
    months = sorted(months)
    candles = source.fetch(symbol, settings.interval, months[0], next_month(months[-1]))
    wanted = {m.date() for m in months}
    raw = (
        with_month(candles)
        .filter(pl.col("month").is_in(wanted))
        .with_columns(
            pl.lit(settings.interval).alias("interval"),
            pl.lit(symbol).alias("symbol"),
            pl.lit(source.name).alias("source"),
            pl.lit(datetime.now(timezone.utc)).cast(pl.Datetime("us", "UTC")).alias("ingested_at"),
            pl.lit(uuid.uuid4().hex).alias("batch_id"),
        )
    )
    replace_partitions(LakeTables.under(settings).raw, raw, settings.interval, symbol, wanted)
    return raw


@dataclass(frozen=True)
class BronzeReport:
    result: BronzeResult
    gaps: pl.DataFrame = field(repr=False)


def build_bronze(settings: Settings, symbol: str, months: list[datetime]) -> BronzeReport:
    """Clean the months' raw rows into bronze; rejected rows go to quarantine with the rule they broke."""
    tables = LakeTables.under(settings)
    months = sorted(months)
    wanted = [m.date() for m in months]
    # The read spans first..last month; a backfill of non-adjacent months must not touch the ones between.
    raw = read_rows(tables.raw, settings.interval, symbol, months[0], next_month(months[-1])).filter(pl.col("month").is_in(wanted))
    result = clean_raw(raw, settings.interval_seconds)
    replace_partitions(tables.bronze, result.bronze, settings.interval, symbol, wanted)
    replace_partitions(tables.quarantine, result.quarantine, settings.interval, symbol, wanted)
    return BronzeReport(result, find_gaps(result.bronze, settings.interval_seconds, settings.gap_tolerance_bars))


def build_silver(settings: Settings, symbol: str, months: list[datetime], since: datetime | None = None) -> pl.DataFrame:
    """Features, regime and labels for the months (from `since` on, for a daily update); returns the rows written."""
    tables = LakeTables.under(settings)
    months = sorted(months)
    windows = month_windows(months, settings)
    bronze = read_rows(tables.bronze, settings.interval, symbol, windows[0][0], windows[-1][3]).rechunk()
    parts = [(month.date(), rows) for month, rows in window_frames(bronze, settings, months, since)]
    if since is not None:
        # A daily update rewrites the rows from `since` on, inside one month: a predicate write.
        silver = pl.concat(pl.collect_all([rows for _, rows in parts], engine="in-memory"))
        replace_partitions(tables.silver, silver, settings.interval, symbol, [m.date() for m in months], since=since)
        return silver
    schema = build_features(bronze.head(0), settings).collect_schema()
    frames = replace_partitions_by_files(tables.silver, parts, settings.interval, symbol, schema)
    return pl.concat(frames) if frames else pl.DataFrame(schema=schema)
