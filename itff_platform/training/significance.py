"""Significance tests for the decisions that compare noisy numbers: is one forecaster's loss really lower than
another's on the same rows, and does a trading rule really earn more than nothing after fees?

A bare difference of two mean losses over a few thousand overlapping-label rows is mostly noise: on the
packaged sample two families routinely differ by 1e-4 in log loss and swap places on the next window."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class LossComparison:
    """Diebold-Mariano comparison of per-row losses: `mean_gain` > 0 means the candidate's loss is lower."""

    mean_gain: float
    statistic: float
    p_value: float  # one-sided: H1 = the candidate's expected loss is lower
    rows: int
    lag: int

    def significant(self, alpha: float) -> bool:
        return self.p_value < alpha


def newey_west_lag(rows: int, horizon: int) -> int:
    """Autocovariance lags the HAC variance sums over: at least the label horizon (labels of neighbouring rows
    share `horizon - 1` bars, so their losses are correlated that far), and Newey-West's rule of thumb
    4 (T/100)^(2/9) for the volatility clustering beyond it."""
    lag: int = max(horizon, math.ceil(4 * (rows / 100) ** (2 / 9)))
    return lag


def diebold_mariano(candidate_loss: np.ndarray, reference_loss: np.ndarray, horizon: int = 1) -> LossComparison:
    """One-sided Diebold-Mariano test that `candidate_loss` is lower than `reference_loss` row for row.

    The loss differential d_t = reference - candidate is averaged; its variance is the Newey-West (Bartlett
    kernel) HAC estimate, and the statistic gets Harvey, Leybourne and Newbold's small-sample correction with
    a Student t reference distribution (Harvey et al., 1997)."""
    reference_loss, candidate_loss = np.asarray(reference_loss, np.float64), np.asarray(candidate_loss, np.float64)
    if reference_loss.shape != candidate_loss.shape:
        raise ValueError(f"losses: {candidate_loss.shape} and {reference_loss.shape} rows; compare on the same rows")
    d = reference_loss - candidate_loss
    d = d[np.isfinite(d)]
    n = len(d)
    if n < 10:
        return LossComparison(float(d.mean()) if n else float("nan"), float("nan"), 1.0, n, 0)
    lag = min(newey_west_lag(n, horizon), n - 1)
    centred = d - d.mean()
    autocovariance = np.array([centred[k:] @ centred[: n - k] / n for k in range(lag + 1)])
    bartlett = 1 - np.arange(1, lag + 1) / (lag + 1)
    long_run_variance = autocovariance[0] + 2 * (bartlett * autocovariance[1:]).sum()
    if long_run_variance <= 0 or not np.isfinite(long_run_variance):
        # Identical forecasts (d constant) carry no evidence either way, unless one is better on every row.
        p = 0.0 if d.mean() > 0 and np.all(d > 0) else 1.0
        return LossComparison(float(d.mean()), float("inf") if p == 0 else float("nan"), p, n, lag)
    statistic = d.mean() / math.sqrt(long_run_variance / n)
    correction = math.sqrt(max((n + 1 - 2 * horizon + horizon * (horizon - 1) / n) / n, 1e-12))
    statistic *= correction
    return LossComparison(float(d.mean()), float(statistic), float(stats.t.sf(statistic, df=n - 1)), n, lag)


def mean_above_zero_p_value(returns: np.ndarray, resamples: int = 4000, seed: int = 0) -> float:
    """Bootstrap p-value for "the mean of these (non-overlapping) trade returns is above zero": the share of
    resampled means at or below zero. Trade returns are fat-tailed, so a t-test would overstate the evidence
    of a handful of large wins. Deterministic for a given seed."""
    returns = np.asarray(returns, np.float64)
    returns = returns[np.isfinite(returns)]
    if len(returns) < 2:
        return 1.0
    rng = np.random.default_rng(seed)
    means = returns[rng.integers(0, len(returns), size=(resamples, len(returns)))].mean(axis=1)
    return float((np.sum(means <= 0) + 1) / (resamples + 1))
