"""Market regime per bar from transparent rules; thresholds live in the settings.

    unknown        while any input is still warming up
    volatile       realized volatility at or above its trailing quantile (checked first: it overrides trend)
    trending_up    ADX >= trend threshold and the EMA slope is positive
    trending_down  ADX >= trend threshold and the EMA slope is negative
    range_bound    ADX < range threshold
    neutral        everything else

The names themselves are rules.REGIMES, which the schemas, metrics and the API enumerate.
"""

from __future__ import annotations

import polars as pl

from itff_platform.features.indicators import rolling_after_warmup
from itff_platform.settings import Settings

SLOPE_BARS = 5


def trend_slope(ema_column: str) -> pl.Expr:
    """Change of the trend EMA over SLOPE_BARS bars, in ATRs: scale-free, so one threshold fits every symbol."""
    line = pl.col(ema_column)
    return (line - line.shift(SLOPE_BARS)) / pl.col("atr")


def volatility_ceiling(settings: Settings) -> pl.Expr:
    return rolling_after_warmup(
        pl.col("realized_vol"),
        settings.features.regime_volatility_lookback,
        "rolling_quantile",
        quantile=settings.features.regime_volatility_quantile,
        interpolation="linear",
    )


def regime(settings: Settings) -> pl.Expr:
    adx, slope = pl.col("adx"), pl.col("trend_slope")
    return (
        pl.when(pl.any_horizontal(adx.is_null(), slope.is_null(), pl.col("_volatility_ceiling").is_null()))
        .then(pl.lit("unknown"))
        .when(pl.col("realized_vol") >= pl.col("_volatility_ceiling"))
        .then(pl.lit("volatile"))
        .when((adx >= settings.features.regime_adx_trend) & (slope > 0))
        .then(pl.lit("trending_up"))
        .when((adx >= settings.features.regime_adx_trend) & (slope < 0))
        .then(pl.lit("trending_down"))
        .when(adx < settings.features.regime_adx_range)
        .then(pl.lit("range_bound"))
        .otherwise(pl.lit("neutral"))
    )
