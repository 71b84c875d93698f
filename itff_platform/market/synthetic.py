"""Synthetic candles: geometric random walks with consistent OHLC, for tests, benchmarks and the
honesty check that a model scores as random on data with nothing to learn."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import polars as pl


def random_walk_candles(
    n: int,
    seed: int = 0,
    start: datetime = datetime(2024, 1, 1, tzinfo=UTC),
    step_s: int = 3600,
    start_price: float = 100.0,
    volatility: float = 0.002,
    wick: float = 0.001,
    garch: bool = False,
) -> pl.DataFrame:
    """A geometric random walk: Gaussian log returns, or with `garch` a GARCH(1,1) walk with Student-t(4) shocks,
    whose volatility clusters and whose tails are fat like real crypto's while its direction stays unpredictable."""
    rng = np.random.default_rng(seed)
    returns = garch_returns(rng, n, volatility) if garch else rng.normal(0, volatility, n)
    close = start_price * np.exp(np.cumsum(returns))
    open_ = np.r_[close[0], close[:-1]]
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0, wick, n)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0, wick, n)))
    start_us = int(start.timestamp() * 1_000_000)
    return pl.DataFrame(
        {
            "timestamp": pl.Series(np.arange(n, dtype=np.int64) * step_s * 1_000_000 + start_us).cast(
                pl.Datetime("us", "UTC")
            ),
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "volume": rng.gamma(2.0, 10.0, n),
        }
    )


def garch_returns(
    rng: np.random.Generator, n: int, volatility: float, alpha: float = 0.08, beta: float = 0.9, dof: float = 4.0
) -> np.ndarray:
    """Log returns r_t = sigma_t z_t, sigma_t^2 = omega + alpha r_{t-1}^2 + beta sigma_{t-1}^2, z ~ t(dof) scaled to
    unit variance, omega chosen so the unconditional standard deviation is `volatility`. A martingale: a model can
    learn how large the next move will be, never which way it goes."""
    shocks = rng.standard_t(dof, n) / np.sqrt(dof / (dof - 2))
    omega = volatility**2 * (1 - alpha - beta)
    variance, returns = volatility**2, np.empty(n)
    for t in range(n):  # a recursion: each variance needs the previous return
        returns[t] = np.sqrt(variance) * shocks[t]
        variance = omega + alpha * returns[t] ** 2 + beta * variance
    return returns
