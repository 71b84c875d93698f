"""A look-ahead audit: change the future and see which feature columns notice.

Any column whose values up to bar t change when only bars after t change reads the future. Labels are
expected to (they are the future); everything else must not."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import polars as pl

from itff_platform.features.labels import LABEL_COLUMNS


def lookahead_violations(
    build: Callable[[pl.DataFrame], pl.DataFrame], candles: pl.DataFrame, cut: int, seed: int = 7
) -> list[str]:
    """Columns of `build(candles)` that differ in rows 0..cut when every candle after `cut` is perturbed."""
    rng = np.random.default_rng(seed)

    def future_factors() -> np.ndarray:
        return np.concatenate([np.ones(cut + 1), rng.uniform(0.5, 1.5, candles.height - cut - 1)])

    price, volume = future_factors(), future_factors()
    changed = candles.with_columns(
        *(pl.col(c) * price for c in ("open", "high", "low", "close")), pl.col("volume") * volume
    )
    before, after = build(candles).head(cut + 1), build(changed).head(cut + 1)
    return [c for c in before.columns if c not in LABEL_COLUMNS and not before[c].equals(after[c])]
