"""Forward-looking targets. These are the only columns allowed to read the future; features never do."""

from __future__ import annotations

import polars as pl

from itff_platform.settings import Settings

LABEL_COLUMNS = ["forward_return", "direction", "direction_neutral", "level_up"]


def label_columns(settings: Settings) -> list[pl.Expr]:
    h, k = settings.features.label_horizon, settings.features.label_barrier_atr
    close, atr = pl.col("close"), pl.col("atr")
    # A label spanning a gap in the data would mix horizons, so it is left null instead.
    complete = (pl.col("timestamp").shift(-h) - pl.col("timestamp")) == pl.duration(
        seconds=h * settings.interval_seconds
    )
    forward = pl.when(complete).then((close.shift(-h) / close).log())

    upper, lower = close + k * atr, close - k * atr
    never = h + 1
    first_up = pl.min_horizontal(
        [pl.when(pl.col("high").shift(-j) >= upper).then(j).otherwise(never) for j in range(1, h + 1)]
    )
    first_down = pl.min_horizontal(
        [pl.when(pl.col("low").shift(-j) <= lower).then(j).otherwise(never) for j in range(1, h + 1)]
    )
    # Touching both barriers within the same bar is ambiguous: counted as not set.
    level_up = pl.when(complete & atr.is_not_null()).then((first_up < first_down).cast(pl.Int8))
    return [
        forward.alias("forward_return"),
        (forward > 0).cast(pl.Int8).alias("direction"),
        (forward.abs() < settings.features.label_neutral_zone).alias("direction_neutral"),
        level_up.alias("level_up"),
    ]
