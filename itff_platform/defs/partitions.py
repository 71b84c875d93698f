"""symbol x month partitions, shared by every lake asset."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, date, datetime

from dagster import (
    MonthlyPartitionsDefinition,
    MultiPartitionKey,
    MultiPartitionsDefinition,
    StaticPartitionsDefinition,
)

from itff_platform.settings import Settings


def open_ended(settings: Settings) -> bool:
    return settings.end_date is None and settings.source != "sample"


def lake_partitions(settings: Settings) -> MultiPartitionsDefinition:
    return MultiPartitionsDefinition(
        {
            "symbol": StaticPartitionsDefinition(settings.symbols),
            "month": MonthlyPartitionsDefinition(
                start_date=settings.start_date.strftime("%Y-%m-01"),
                # A live source has no end: the month in progress is a partition too (end_offset=1), re-evaluated
                # at every tick, so a code server loaded in one month still knows the next.
                end_date=None if open_ended(settings) else settings.effective_end_date().strftime("%Y-%m-%d"),
                end_offset=1,
            ),
        }
    )


def months_by_symbol(partition_keys: Sequence[str]) -> dict[str, list[datetime]]:
    """Group a run's partition keys (one, or all of a single-run backfill) by symbol."""
    grouped: dict[str, list[datetime]] = defaultdict(list)
    for key in partition_keys:
        dims = (
            key.keys_by_dimension
            if isinstance(key, MultiPartitionKey)
            else dict(zip(("month", "symbol"), str(key).split("|"), strict=True))
        )
        month = datetime.strptime(dims["month"], "%Y-%m-%d").replace(tzinfo=UTC)
        grouped[dims["symbol"]].append(month)
    return {symbol: sorted(months) for symbol, months in sorted(grouped.items())}


def symbol_and_month(key) -> tuple[str, date]:
    """One lake partition key ('YYYY-MM-DD|SYMBOL' or a MultiPartitionKey) as (symbol, month start)."""
    ((symbol, (month,)),) = months_by_symbol([key]).items()
    return symbol, month.date()
