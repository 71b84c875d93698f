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
from itff_platform.lake.cleaning import BronzeResult, clean_raw, continuity_breaks, find_gaps
from itff_platform.lake.delta import read_rows, replace_partitions, replace_partitions_by_files, table_version, with_month
from itff_platform.market.candles import CandleSource
from itff_platform.market.files import FilesCandleSource, RejectedFile
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


def previous_month(start: datetime) -> datetime:
    return datetime(start.year - (start.month == 1), (start.month - 2) % 12 + 1, 1, tzinfo=timezone.utc)


def lake_months(settings: Settings) -> tuple[date, date]:
    """[first month, end): the months the lake holds partitions for (the month in progress too, for a live source)."""
    return settings.start_date.replace(day=1), settings.effective_end_date()


OUT_OF_RANGE = "out_of_range"


@dataclass(frozen=True)
class RawIngest:
    """What one symbol's ingestion received and where every row went:
    received = raw (the run's months) + rows for other lake months (left to their own runs) + out of range (quarantined)."""

    raw: pl.DataFrame
    received: int
    other_months: pl.DataFrame  # month, rows: lake months this run did not ask for; their own runs ingest them
    out_of_range: pl.DataFrame  # quarantined with rule out_of_range, plus the file each row came from
    rejected: list[RejectedFile] = field(default_factory=list)
    kept_months: list[date] = field(default_factory=list)  # left as they were: their only files were rejected

    @property
    def reconciles(self) -> bool:
        other = int(self.other_months["rows"].sum()) if self.other_months.height else 0
        return self.received == self.raw.height + other + self.out_of_range.height


def ingest_raw(source: CandleSource, settings: Settings, symbol: str, months: list[datetime]) -> RawIngest:
    """Fetch the months' candles as received and replace their raw partitions.

    A files source hands over every row its files hold: rows for other lake months are counted and left to their
    own runs, rows outside the lake's months go to quarantine with rule out_of_range. Nothing is dropped unseen."""
    months = sorted(months)
    wanted = {m.date() for m in months}
    rejected_before = len(getattr(source, "rejected", []))
    if isinstance(source, FilesCandleSource):
        candles = source.read(symbol, settings.interval)
    else:
        candles = source.fetch(symbol, settings.interval, months[0], next_month(months[-1])).with_columns(
            pl.lit(None, dtype=pl.String).alias("file")
        )
    received = (
        with_month(candles)
        .with_columns(
            pl.lit(settings.interval).alias("interval"),
            pl.lit(symbol).alias("symbol"),
            pl.lit(source.name).alias("source"),
            pl.lit(datetime.now(timezone.utc)).cast(pl.Datetime("us", "UTC")).alias("ingested_at"),
            pl.lit(uuid.uuid4().hex).alias("batch_id"),
        )
    )
    first, end = lake_months(settings)
    in_lake = pl.col("month").is_between(first, end, closed="left")
    raw = received.filter(pl.col("month").is_in(wanted)).drop("file")
    other = received.filter(in_lake & ~pl.col("month").is_in(wanted)).group_by("month").len("rows").sort("month")
    out_of_range = received.filter(~in_lake).with_columns(
        pl.lit(f"{OUT_OF_RANGE}: timestamp outside the lake's months [{first}, {end})").alias("rule")
    )
    rejected = list(getattr(source, "rejected", []))[rejected_before:]
    # A month whose files were all rejected keeps what the lake had: a bad re-sent file must not empty a good month.
    present = set(raw["month"].unique().to_list())
    kept = sorted(wanted - present) if rejected else []
    tables = LakeTables.under(settings)
    replace_partitions(tables.raw, raw, settings.interval, symbol, wanted - set(kept))
    if out_of_range.height:
        replace_partitions(
            tables.quarantine, out_of_range.drop("file"), settings.interval, symbol, out_of_range["month"].unique().to_list()
        )
    return RawIngest(raw, received.height, other, out_of_range, rejected, kept)


@dataclass(frozen=True)
class BronzeReport:
    result: BronzeResult
    gaps: pl.DataFrame = field(repr=False)
    breaks: pl.DataFrame = field(repr=False, default_factory=pl.DataFrame)  # price_continuity: jumps beyond k ATR


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
    # Continuity is judged on the months written and their neighbours in the lake: the previous month supplies
    # the ATR and the last close before the first bar, the next month's first bar closes the boundary after.
    around = read_rows(tables.bronze, settings.interval, symbol, previous_month(months[0]), next_month(next_month(months[-1])))
    breaks = continuity_breaks(around, settings.atr_period, settings.continuity_atr_multiple, wanted)
    return BronzeReport(result, find_gaps(result.bronze, settings.interval_seconds, settings.gap_tolerance_bars), breaks)


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
