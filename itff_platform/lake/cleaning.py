"""raw -> bronze: collapse exact duplicates, quarantine rows that break a rule, keep one row per timestamp.

Counts reconcile by construction: raw = bronze + quarantined + collapsed exact duplicates.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

import numpy as np
import polars as pl

from itff_platform.market.candles import CANDLE_COLUMNS, PRICE_COLUMNS

KEY = ["interval", "symbol", "timestamp"]


def row_rules(interval_seconds: int) -> list[tuple[str, pl.Expr]]:
    """(rule broken, expression true where a row breaks it), checked in order; the first broken rule is recorded."""
    ts_us = pl.col("timestamp").dt.epoch("us")
    rules: list[tuple[str, pl.Expr]] = [("timestamp: must be present", pl.col("timestamp").is_null())]
    rules.append(
        (f"timestamp: must fall on a {interval_seconds}s bar boundary", ts_us % (interval_seconds * 1_000_000) != 0)
    )
    for column in CANDLE_COLUMNS[1:]:
        rules.append((f"{column}: must be a finite number", pl.col(column).is_null() | ~pl.col(column).is_finite()))
    for column in PRICE_COLUMNS:
        rules.append((f"{column}: must be > 0", pl.col(column) <= 0))
    rules += [
        ("volume: must be > 0", pl.col("volume") <= 0),
        ("high: must be >= low", pl.col("high") < pl.col("low")),
        ("high: must be >= open and close", pl.col("high") < pl.max_horizontal("open", "close")),
        ("low: must be <= open and close", pl.col("low") > pl.min_horizontal("open", "close")),
    ]
    return rules


def plainly_valid(stamps_us: np.ndarray, values: np.ndarray, interval_seconds: int) -> bool:
    """True when no row breaks a row_rules rule: the same rules in numpy, for the few rows of a request window
    not judged before (serving.candle_windows), where polars' fixed cost per query (~1 ms) is the whole cost. It may only
    ever say less than row_rules (on False the caller judges the rows with clean_raw, whose verdict and message
    count); test_cleaning pins a broken row for every rule. `values`: open, high, low, close, volume columns."""
    o, h, lo, c = values[:, :4].T
    with np.errstate(invalid="ignore"):
        return bool(
            (stamps_us % (interval_seconds * 1_000_000) == 0).all()
            and np.isfinite(values).all()
            and (values > 0).all()  # prices and volume
            and (h >= lo).all()
            and (h >= np.maximum(o, c)).all()
            and (lo <= np.minimum(o, c)).all()
        )


@dataclass(frozen=True)
class BronzeResult:
    bronze: pl.DataFrame
    quarantine: pl.DataFrame
    raw_rows: int
    collapsed_duplicates: int

    @classmethod
    def combined(cls, results: Iterable[BronzeResult]) -> BronzeResult:
        """Several results (one per symbol of a run) as one: their rows together, their counts summed."""
        results = list(results)
        return cls(
            bronze=pl.concat([r.bronze for r in results]),
            quarantine=pl.concat([r.quarantine for r in results]),
            raw_rows=sum(r.raw_rows for r in results),
            collapsed_duplicates=sum(r.collapsed_duplicates for r in results),
        )

    @property
    def reconciles(self) -> bool:
        return self.raw_rows == self.bronze.height + self.quarantine.height + self.collapsed_duplicates

    def rule_counts(self, month: date | None = None) -> pl.DataFrame:
        """rule, len: the quarantined rows per rule broken (of one month's rows, given `month`)."""
        rows = self.quarantine if month is None else self.quarantine.filter(pl.col("month") == month)
        return rows.group_by("rule").len().sort("rule")


def clean_raw(raw: pl.DataFrame, interval_seconds: int) -> BronzeResult:
    """`raw` carries CANDLE_COLUMNS plus interval, symbol, source, ingested_at, batch_id."""
    raw_rows = raw.height
    # Arrival order decides which of two conflicting rows wins: the later one.
    ordered = raw.with_row_index("_arrival")
    distinct = ordered.unique(subset=["interval", "symbol", *CANDLE_COLUMNS], keep="last", maintain_order=True)
    collapsed = raw_rows - distinct.height

    rule = pl.lit(None, dtype=pl.String)
    for name, broken in reversed(row_rules(interval_seconds)):
        rule = pl.when(broken.fill_null(False)).then(pl.lit(name)).otherwise(rule)
    judged = distinct.with_columns(rule.alias("rule"))

    valid = judged.filter(pl.col("rule").is_null())
    latest = pl.col("_arrival") == pl.col("_arrival").max().over(KEY)
    conflicting = valid.filter(~latest).with_columns(
        pl.lit("timestamp: duplicate with different values; the last received row was kept").alias("rule")
    )
    bronze = valid.filter(latest).drop("rule", "_arrival", "source", "ingested_at", "batch_id", strict=False)
    quarantine = pl.concat([judged.filter(pl.col("rule").is_not_null()), conflicting]).drop("_arrival")
    return BronzeResult(
        bronze=bronze.sort(["symbol", "timestamp"]),
        quarantine=quarantine.sort(["symbol", "timestamp"], nulls_last=True),
        raw_rows=raw_rows,
        collapsed_duplicates=collapsed,
    )


def find_gaps(bronze: pl.DataFrame, interval_seconds: int, tolerance_bars: int = 0) -> pl.DataFrame:
    """Runs of missing bars longer than the tolerance: last bar before, first bar after, bars missing."""
    return (
        bronze.sort("symbol", "timestamp")
        .with_columns(pl.col("timestamp").shift(1).over("symbol").alias("gap_after"))
        .with_columns(
            ((pl.col("timestamp").dt.epoch("s") - pl.col("gap_after").dt.epoch("s")) // interval_seconds - 1).alias(
                "missing_bars"
            )
        )
        .filter(pl.col("missing_bars") > tolerance_bars)
        .select("symbol", "gap_after", pl.col("timestamp").alias("gap_before"), "missing_bars")
    )


def continuity_breaks(
    bronze: pl.DataFrame, atr_period: int, atr_multiple: float, months: Iterable[date] | None = None
) -> pl.DataFrame:
    """Bars whose open or close moved more than `atr_multiple` ATRs from the previous close: a wrong symbol's file,
    a unit change, a price scaled by 100. The ATR is Wilder's over the bars *before* the one judged, so the jump
    itself cannot hide in it. With `months`, only bars in those months, or the first bar after one, are reported.

    Real BTC and ETH hourly candles, 2021-2024, never moved more than 19 ATRs in one bar."""
    previous_close = pl.col("close").shift(1).over("symbol")
    true_range = pl.max_horizontal(
        pl.col("high") - pl.col("low"), (pl.col("high") - previous_close).abs(), (pl.col("low") - previous_close).abs()
    )
    judged = (
        bronze.sort("symbol", "timestamp")
        .with_columns(
            previous_close.alias("previous_close"),
            true_range.alias("_tr"),
            pl.col("month").shift(1).over("symbol").alias("_previous_month"),
        )
        .with_columns(
            pl.col("_tr")
            .ewm_mean(alpha=1 / atr_period, adjust=False, min_samples=atr_period)
            .shift(1)
            .over("symbol")
            .alias("atr_before")
        )
        .with_columns(
            (
                pl.max_horizontal(
                    (pl.col("open") - pl.col("previous_close")).abs(),
                    (pl.col("close") - pl.col("previous_close")).abs(),
                )
                / pl.col("atr_before")
            ).alias("atr_multiple"),
            (pl.col("close") / pl.col("previous_close")).alias("ratio"),
        )
    )
    flagged = judged.filter(pl.col("atr_multiple") > atr_multiple)
    if months is not None:
        months = list(months)
        flagged = flagged.filter(pl.col("month").is_in(months) | pl.col("_previous_month").is_in(months))
    return flagged.select(
        "symbol", "timestamp", "previous_close", "open", "close", "ratio", "atr_before", "atr_multiple"
    )
