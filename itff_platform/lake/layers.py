"""The three lake layers as plain functions: fetch -> raw, raw -> bronze (+ quarantine), bronze -> silver.

Each takes one symbol and a list of month starts, reads what it needs and replaces exactly those
partitions. Dagster's assets call these; so do the CLI, the benchmark and the tests.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import partial

import polars as pl

from itff_platform.features.silver import build_features, month_windows, windows
from itff_platform.lake.cleaning import BronzeResult, clean_raw, continuity_breaks, find_gaps
from itff_platform.lake.delta import (
    read_rows,
    replace_partitions,
    replace_partitions_by_files,
    table_version,
    with_month,
)
from itff_platform.lake.incremental import bronze_fingerprints, raw_fingerprints, silver_fingerprints, unchanged_months
from itff_platform.market.candles import CandleSource
from itff_platform.market.files import FilesCandleSource, RejectedFile
from itff_platform.rules import next_month, previous_month
from itff_platform.settings import Settings


@dataclass(frozen=True)
class LakeTables:
    raw: str
    bronze: str
    quarantine: str
    silver: str

    @classmethod
    def under(cls, settings: Settings) -> LakeTables:
        root = settings.lake.root
        return cls(
            raw=str(root / "raw" / "candles"),
            bronze=str(root / "bronze" / "candles"),
            quarantine=str(root / "bronze" / "quarantine"),
            silver=str(root / "silver" / "features"),
        )

    def versions(self) -> dict[str, int | None]:
        return {name: table_version(path) for name, path in vars(self).items()}


def month_start(day: date) -> datetime:
    """The first instant of `day`'s month, in UTC: where a month partition begins."""
    return datetime(day.year, day.month, 1, tzinfo=UTC)


def month_end(day: date) -> datetime:
    """The first instant after `day`'s month, in UTC: where its month partition ends."""
    return month_start(next_month(day))


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
    unchanged: list[date] = field(default_factory=list)  # not rewritten: the lake holds exactly these rows already

    @property
    def reconciles(self) -> bool:
        other = int(self.other_months["rows"].sum()) if self.other_months.height else 0
        return self.received == self.raw.height + other + self.out_of_range.height


def ingest_raw(
    source: CandleSource, settings: Settings, symbol: str, months: list[datetime], skip_unchanged: bool = False
) -> RawIngest:
    """Fetch the months' candles as received and replace their raw partitions (with `skip_unchanged`, only those
    whose candles differ from what the lake ingested last time: see lake.incremental).

    A files source hands over every row its files hold: rows for other lake months are counted and left to their
    own runs, rows outside the lake's months go to quarantine with rule out_of_range. Nothing is dropped unseen."""
    months = sorted(months)
    wanted = {m.date() for m in months}
    rejected_before = len(getattr(source, "rejected", []))
    if isinstance(source, FilesCandleSource):
        candles = source.read(symbol, settings.interval)
    else:
        candles = source.fetch(symbol, settings.interval, months[0], month_end(months[-1])).with_columns(
            pl.lit(None, dtype=pl.String).alias("file")
        )
    received = with_month(candles).with_columns(
        pl.lit(settings.interval).alias("interval"),
        pl.lit(symbol).alias("symbol"),
        pl.lit(source.name).alias("source"),
        pl.lit(datetime.now(UTC)).cast(pl.Datetime("us", "UTC")).alias("ingested_at"),
        pl.lit(uuid.uuid4().hex).alias("batch_id"),
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
    fingerprints = raw_fingerprints(settings, source.name, raw, sorted(wanted))
    unchanged = unchanged_months(tables.raw, settings.interval, symbol, fingerprints) if skip_unchanged else []
    write = sorted(wanted - set(kept) - set(unchanged))
    replace_partitions(
        tables.raw,
        raw.filter(pl.col("month").is_in(write)),
        settings.interval,
        symbol,
        write,
        fingerprints=fingerprints,
    )
    if out_of_range.height:
        replace_partitions(
            tables.quarantine,
            out_of_range.drop("file"),
            settings.interval,
            symbol,
            out_of_range["month"].unique().to_list(),
        )
    return RawIngest(raw, received.height, other, out_of_range, rejected, kept, [m for m in unchanged if m not in kept])


def unchanged_lake(settings: Settings, source: CandleSource, months_by_symbol: dict[str, list[datetime]]) -> bool:
    """True when a run over these partitions would skip every one of them, in every layer: the source hands over
    the rows raw holds, and bronze and silver were built from what raw and bronze hold, with today's settings and
    code. It writes nothing, but it does fetch from the source: a source that sets bad files aside as it reads them
    (files) must not be asked."""
    tables = LakeTables.under(settings)

    def all_unchanged(path: str, fingerprints: dict[date, str]) -> bool:
        return len(unchanged_months(path, settings.interval, symbol, fingerprints)) == len(fingerprints)

    for symbol, months in months_by_symbol.items():
        months = sorted(months)
        wanted = [m.date() for m in months]
        received = with_month(source.fetch(symbol, settings.interval, months[0], month_end(months[-1])))
        if not all_unchanged(tables.raw, raw_fingerprints(settings, source.name, received, wanted)):
            return False
        raw = read_rows(tables.raw, settings.interval, symbol, months[0], month_end(months[-1])).filter(
            pl.col("month").is_in(wanted)
        )
        if not all_unchanged(tables.bronze, bronze_fingerprints(settings, raw, wanted)):
            return False
        windows = month_windows(months, settings)
        bronze = read_rows(tables.bronze, settings.interval, symbol, windows[0][0], windows[-1][3]).rechunk()
        if not all_unchanged(tables.silver, silver_fingerprints(settings, bronze, months)):
            return False
    return True


@dataclass(frozen=True)
class BronzeReport:
    result: BronzeResult
    gaps: pl.DataFrame = field(repr=False)
    breaks: pl.DataFrame = field(repr=False, default_factory=pl.DataFrame)  # price_continuity: jumps beyond k ATR
    unchanged: list[date] = field(default_factory=list)  # not rebuilt: same raw rows, settings and code as last time


def build_bronze(settings: Settings, symbol: str, months: list[datetime], skip_unchanged: bool = False) -> BronzeReport:
    """Clean the months' raw rows into bronze; rejected rows go to quarantine with the rule they broke.

    With `skip_unchanged`, months whose raw rows are those their bronze was built from are not cleaned again; the
    report then describes them from the lake, so its counts and checks cover every month asked for, as a rebuild's do."""
    tables = LakeTables.under(settings)
    months = sorted(months)
    wanted = [m.date() for m in months]
    # The read spans first..last month; a backfill of non-adjacent months must not touch the ones between.
    raw = read_rows(tables.raw, settings.interval, symbol, months[0], month_end(months[-1])).filter(
        pl.col("month").is_in(wanted)
    )
    fingerprints = bronze_fingerprints(settings, raw, wanted)
    unchanged = unchanged_months(tables.bronze, settings.interval, symbol, fingerprints) if skip_unchanged else []
    build = [m for m in wanted if m not in unchanged]
    result = clean_raw(raw.filter(pl.col("month").is_in(build)), settings.interval_seconds)
    replace_partitions(tables.bronze, result.bronze, settings.interval, symbol, build, fingerprints=fingerprints)
    replace_partitions(tables.quarantine, result.quarantine, settings.interval, symbol, build)
    # Continuity is judged on the months written and their neighbours in the lake: the previous month supplies
    # the ATR and the last close before the first bar, the next month's first bar closes the boundary after.
    around = read_rows(
        tables.bronze,
        settings.interval,
        symbol,
        month_start(previous_month(months[0])),
        month_end(next_month(months[-1])),
    )
    breaks = continuity_breaks(around, settings.features.atr_period, settings.lake.continuity_atr_multiple, wanted)
    if unchanged:
        result = with_lake_months(result, tables, settings.interval, symbol, raw, around, unchanged)
    return BronzeReport(
        result, find_gaps(result.bronze, settings.interval_seconds, settings.lake.gap_tolerance_bars), breaks, unchanged
    )


def with_lake_months(
    result: BronzeResult,
    tables: LakeTables,
    interval: str,
    symbol: str,
    raw: pl.DataFrame,
    bronze: pl.DataFrame,
    months: list[date],
) -> BronzeResult:
    """`result` plus what the lake holds for months that were not rebuilt: their raw rows, bronze rows and
    quarantined rows (their collapsed duplicates are what is left, as when they were built)."""
    in_months = pl.col("month").is_in(months)
    start, end = month_start(months[0]), month_end(months[-1])
    try:
        quarantine = read_rows(tables.quarantine, interval, symbol, start, end).filter(in_months)
    except FileNotFoundError:  # nothing was ever quarantined
        quarantine = result.quarantine.head(0)
    kept_bronze = bronze.filter(in_months).select(result.bronze.columns)
    raw_rows = raw.filter(in_months).height
    return BronzeResult(
        bronze=pl.concat([result.bronze, kept_bronze], how="vertical_relaxed").sort(["symbol", "timestamp"]),
        quarantine=pl.concat(
            [result.quarantine, quarantine.select(result.quarantine.columns)], how="vertical_relaxed"
        ).sort(["symbol", "timestamp"], nulls_last=True),
        raw_rows=result.raw_rows + raw_rows,
        collapsed_duplicates=result.collapsed_duplicates + raw_rows - kept_bronze.height - quarantine.height,
    )


def build_silver(
    settings: Settings, symbol: str, months: list[datetime], since: datetime | None = None
) -> pl.DataFrame:
    """Features, regime and labels for the months (from `since` on, for a daily update); returns the rows written."""
    return refresh_silver(settings, symbol, months, since).rows


@dataclass(frozen=True)
class SilverRefresh:
    rows: pl.DataFrame  # every month's silver rows (the columns asked for): rebuilt, or read back for unchanged ones
    unchanged: list[date] = field(default_factory=list)  # not rebuilt: the same bronze read span, settings and code
    schema: pl.Schema = field(default_factory=pl.Schema)  # of the rows written, every column


def refresh_silver(
    settings: Settings,
    symbol: str,
    months: list[datetime],
    since: datetime | None = None,
    skip_unchanged: bool = False,
    columns: list[str] | None = None,
) -> SilverRefresh:
    """build_silver; with `skip_unchanged`, months whose bronze read span (warm-up and label horizon included)
    is the one their silver was built from are not rebuilt, and their rows are read back from the lake.

    Each month is written as soon as it is computed; only `columns` of its rows (all by default) are kept for the
    answer, so a rebuild that asks for a few holds two months of whole rows at a time, not all of them."""
    tables = LakeTables.under(settings)
    months = sorted(months)
    spans = month_windows(months, settings)
    bronze = read_rows(tables.bronze, settings.interval, symbol, spans[0][0], spans[-1][3]).rechunk()
    schema = build_features(bronze.head(0), settings).collect_schema()
    chosen = list(schema) if columns is None else columns
    if since is not None:
        # A daily update rewrites the rows from `since` on, inside one month: a predicate write.
        silver = pl.concat([window.rows(settings) for window in windows(bronze, settings, months, since)])
        replace_partitions(tables.silver, silver, settings.interval, symbol, [m.date() for m in months], since=since)
        return SilverRefresh(silver.select(chosen), schema=schema)
    fingerprints = silver_fingerprints(settings, bronze, months)
    unchanged = unchanged_months(tables.silver, settings.interval, symbol, fingerprints) if skip_unchanged else []
    build = [m for m in months if m.date() not in unchanged]
    month_parts = [(window.month.date(), partial(window.rows, settings)) for window in windows(bronze, settings, build)]
    frames = replace_partitions_by_files(
        tables.silver,
        month_parts,
        settings.interval,
        symbol,
        schema,
        fingerprints,
        keep=lambda frame: frame.select(chosen),
    )
    if unchanged:
        start, end = month_start(unchanged[0]), month_end(unchanged[-1])
        frames.append(
            read_rows(tables.silver, settings.interval, symbol, start, end)
            .filter(pl.col("month").is_in(unchanged))
            .select(chosen)
        )
    empty = pl.DataFrame(schema={name: schema[name] for name in chosen})
    return SilverRefresh(pl.concat(frames) if frames else empty, unchanged, schema)
