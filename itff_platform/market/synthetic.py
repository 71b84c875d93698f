"""Synthetic candles: geometric random walks with consistent OHLC, for tests, benchmarks and the
honesty check that a model scores as random on data with nothing to learn."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import polars as pl


def random_walk_candles(
    n: int,
    seed: int = 0,
    start: datetime = datetime(2024, 1, 1, tzinfo=timezone.utc),
    step_s: int = 3600,
    start_price: float = 100.0,
    volatility: float = 0.002,
    wick: float = 0.001,
) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    close = start_price * np.exp(np.cumsum(rng.normal(0, volatility, n)))
    open_ = np.r_[close[0], close[:-1]]
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0, wick, n)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0, wick, n)))
    start_us = int(start.timestamp() * 1_000_000)
    return pl.DataFrame(
        {
            "timestamp": pl.Series(np.arange(n, dtype=np.int64) * step_s * 1_000_000 + start_us).cast(pl.Datetime("us", "UTC")),
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "volume": rng.gamma(2.0, 10.0, n),
        }
    )
