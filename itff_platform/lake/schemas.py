"""pandera (polars backend) schemas for each layer. Dagster's asset checks are built from these."""

from __future__ import annotations

from typing import ClassVar

import pandera.polars as pa
import polars as pl
from pandera.engines import polars_engine as pe

from itff_platform.rules import REGIMES

UTC_MICROS = {"time_unit": "us", "time_zone": "UTC"}


class CandleColumns(pa.DataFrameModel):
    """What every layer shares: one symbol's candles at one interval, keyed by month."""

    interval: str
    symbol: str
    month: pe.Date
    timestamp: pe.DateTime = pa.Field(dtype_kwargs=UTC_MICROS, nullable=True)
    open: float = pa.Field(nullable=True)
    high: float = pa.Field(nullable=True)
    low: float = pa.Field(nullable=True)
    close: float = pa.Field(nullable=True)
    volume: float = pa.Field(nullable=True)


class RawCandles(CandleColumns):
    """As received: values may be anything a vendor sent, so only types and lineage are enforced."""

    source: str
    ingested_at: pe.DateTime = pa.Field(dtype_kwargs=UTC_MICROS)
    batch_id: str


class BronzeCandles(CandleColumns):
    timestamp: pe.DateTime = pa.Field(dtype_kwargs=UTC_MICROS)
    open: float = pa.Field(gt=0)
    high: float = pa.Field(gt=0)
    low: float = pa.Field(gt=0)
    close: float = pa.Field(gt=0)
    volume: float = pa.Field(gt=0)

    class Config:
        unique: ClassVar[list[str]] = ["interval", "symbol", "timestamp"]

    @pa.dataframe_check(name="high_at_least_low")
    def high_at_least_low(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(pl.col("high") >= pl.col("low"))

    @pa.dataframe_check(name="body_within_range")
    def body_within_range(cls, data: pa.PolarsData) -> pl.LazyFrame:
        return data.lazyframe.select(
            (pl.col("high") >= pl.max_horizontal("open", "close"))
            & (pl.col("low") <= pl.min_horizontal("open", "close"))
        )


class QuarantinedCandles(RawCandles):
    rule: str


class SilverFeatures(pa.DataFrameModel):
    interval: str
    symbol: str
    month: pe.Date
    timestamp: pe.DateTime = pa.Field(dtype_kwargs=UTC_MICROS)
    close: float = pa.Field(gt=0)
    rsi: float = pa.Field(ge=0, le=100, nullable=True)
    adx: float = pa.Field(ge=0, le=100, nullable=True)
    atr: float = pa.Field(ge=0, nullable=True)
    regime: str = pa.Field(isin=REGIMES)
    direction: pl.Int8 = pa.Field(isin=[0, 1], nullable=True)
    level_up: pl.Int8 = pa.Field(isin=[0, 1], nullable=True)

    class Config:
        unique: ClassVar[list[str]] = ["interval", "symbol", "timestamp"]


# What silver_features keeps of a rebuild's rows to validate and describe them: the validated columns (which hold the
# per-partition metadata's regime and labels too). Its other ~30 columns are written, not kept (lake.layers.refresh_silver).
SILVER_CHECKED = list(SilverFeatures.to_schema().columns)


def schema_failures(schema: type[pa.DataFrameModel], frame: pl.DataFrame) -> pl.DataFrame:
    """One row per (column, check) that failed, with how many rows failed it; empty when valid."""
    try:
        schema.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as errors:
        failure_cases: pl.DataFrame = errors.failure_cases
        return (
            failure_cases.group_by("column", "check")
            .agg(pl.len().alias("failed_rows"), pl.col("failure_case").first().alias("example"))
            .sort("column", "check")
        )
    return pl.DataFrame(
        schema={"column": pl.String, "check": pl.String, "failed_rows": pl.UInt32, "example": pl.String}
    )
