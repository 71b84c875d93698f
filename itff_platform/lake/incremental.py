"""What each lake partition is built from, as a fingerprint, and which partitions an incremental run can skip.

- raw (symbol, month): the candles the source handed over for the month, the source's name and the interval.
- bronze: the month's raw rows as the lake holds them, lineage columns included (bronze's quarantine keeps them).
- silver: the bronze rows of the month's whole read span (warm-up before it, label horizon after it, see
  features.silver.read_span) and the feature, regime and label settings. A change in the last days of the previous
  month, or the first bars of the next, therefore rebuilds this month too; a change further away does not.
Every fingerprint also covers the lake's code (market/, lake/, features/) and polars' version. The fingerprint a
partition was built from is recorded in the Delta commit that wrote it (lake.delta.FINGERPRINTS)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime
from pathlib import Path

import polars as pl

from itff_platform.features.silver import month_windows, positions
from itff_platform.fingerprints import SHARED_MODULES, code_digest, digest, frame_digest
from itff_platform.lake.delta import partition_id, recorded_fingerprints
from itff_platform.market.candles import CANDLE_COLUMNS
from itff_platform.settings import FeatureSettings, Settings

# The settings the silver frame reads, by flat name: the features section (features, regime, labels) and interval
# for bars per day. A test checks that the features package reads no other setting, so a new feature setting, added
# to the section, cannot be left out.
SILVER_SETTINGS = ("interval", *FeatureSettings.model_fields)


def lake_code() -> str:
    return code_digest("market", "lake", "features", *SHARED_MODULES, libraries=("polars",))


def by_month(rows: pl.DataFrame, months: list[date]) -> dict[date, pl.DataFrame]:
    """Each month's rows (an empty frame for a month without any)."""
    parts = rows.partition_by("month", as_dict=True) if rows.height else {}
    return {m: parts.get((m,), rows.head(0)) for m in months}


def raw_fingerprints(settings: Settings, source: str, received: pl.DataFrame, months: list[date]) -> dict[date, str]:
    """`received`: the source's rows for the months, with a month column."""
    return {
        month: digest("raw", source, settings.interval, frame_digest(rows.select(CANDLE_COLUMNS)), lake_code())
        for month, rows in by_month(received, months).items()
    }


def bronze_fingerprints(settings: Settings, raw: pl.DataFrame, months: list[date]) -> dict[date, str]:
    """`raw`: the lake's raw rows of the months."""
    return {
        month: digest("bronze", settings.interval, frame_digest(rows), lake_code())
        for month, rows in by_month(raw, months).items()
    }


def silver_fingerprints(settings: Settings, bronze: pl.DataFrame, months: list[datetime]) -> dict[date, str]:
    """`bronze`: one symbol's bronze rows sorted by timestamp, covering every month's read span that exists.
    Each month's fingerprint covers the rows of its read span as a set (order does not count, as frame_digest)."""
    chosen = {"interval": settings.interval, **settings.features.model_dump()}  # SILVER_SETTINGS, by flat name
    # Rows in one canonical order, time then every column, hashed once for every window: each month's read span is a
    # slice of one row-hash array. (Sorting each window by all its columns, as frame_digest does, took 5 s of a 21 s
    # rebuild of 10M 1-minute rows.) Bronze arrives with strictly increasing timestamps, already in that order.
    ordered = bronze.select(sorted(bronze.columns))
    stamps = ordered["timestamp"]
    if not (stamps.is_sorted() and stamps.n_unique() == stamps.len()):
        ordered = ordered.sort(["timestamp", *(c for c in ordered.columns if c != "timestamp")], nulls_last=True)
        stamps = ordered["timestamp"]
    hashes = ordered.hash_rows(seed=0).to_numpy()
    spans = month_windows(months, settings)
    found = positions(stamps, [instant for read_from, _, _, read_to in spans for instant in (read_from, read_to)])
    rows = {}
    for k, (_, start, _, _) in enumerate(spans):
        lo, hi = found[2 * k : 2 * k + 2]
        rows[start.date()] = digest(str(ordered.schema), hashes[lo:hi])
    return {month: digest("silver", chosen, row_digest, lake_code()) for month, row_digest in rows.items()}


def unchanged_months(path: str | Path, interval: str, symbol: str, fingerprints: Mapping[date, str]) -> list[date]:
    """The months whose recorded fingerprint in the table at `path` equals the one given: a rebuild would write
    exactly what they hold."""
    recorded = recorded_fingerprints(path)
    return sorted(
        m for m, fingerprint in fingerprints.items() if recorded.get(partition_id(interval, symbol, m)) == fingerprint
    )
