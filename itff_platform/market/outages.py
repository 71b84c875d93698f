"""Exchange outages on record: hours no candle was printed, so a gap there is real and explained, not lost data.

The five below are missing from both symbols of the packaged sample, which is Binance's own 1h kline archive: spot
trading was down. `no_unexpected_gaps` passes on gaps inside them and lists them; any other gap warns."""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl

# (first missing bar, last missing bar) in UTC, per exchange.
BINANCE_SPOT_OUTAGES = [
    ("2021-04-20 02:00", "2021-04-20 03:00"),
    ("2021-04-25 05:00", "2021-04-25 07:00"),
    ("2021-08-13 02:00", "2021-08-13 05:00"),
    ("2021-09-29 07:00", "2021-09-29 08:00"),
    ("2023-03-24 12:00", "2023-03-24 13:00"),
]


def known_outages() -> pl.DataFrame:
    def parse(text: str) -> datetime:
        return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)

    return pl.DataFrame(
        {
            "outage_first": [parse(a) for a, _ in BINANCE_SPOT_OUTAGES],
            "outage_last": [parse(b) for _, b in BINANCE_SPOT_OUTAGES],
        },
        schema={"outage_first": pl.Datetime("us", "UTC"), "outage_last": pl.Datetime("us", "UTC")},
    )


def explain_gaps(gaps: pl.DataFrame, interval_seconds: int) -> pl.DataFrame:
    """`gaps` (symbol, gap_after, gap_before, missing_bars) with `known_outage`: true when every missing bar lies
    inside one outage on record."""
    step = pl.duration(seconds=interval_seconds)
    first_missing, last_missing = pl.col("gap_after") + step, pl.col("gap_before") - step
    inside = (first_missing >= pl.col("outage_first")) & (last_missing <= pl.col("outage_last"))
    explained = gaps.with_row_index("_gap").join(known_outages(), how="cross").filter(inside)["_gap"]
    return (
        gaps.with_row_index("_gap")
        .with_columns(pl.col("_gap").is_in(explained.implode()).alias("known_outage"))
        .drop("_gap")
    )
