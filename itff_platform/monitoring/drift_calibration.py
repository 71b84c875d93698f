"""Drift thresholds calibrated to a false-alarm rate: how far PSI and KS move when nothing changed.

A fixed PSI of 0.25 says nothing about hourly crypto, whose volatility features wander month to month: the
README's replay sent 173 of 180 champion-days to retraining with fixed thresholds. Instead, each statistic's
own distribution over the reference period says what "no change" looks like. Windows of `drift_recent_days`
(the length of the recent window that is compared live) start every `drift_calibration_step_days` through the
reference; each window's PSI and KS against the reference is one draw of the statistic under "no change",
and the error threshold is the draws' (1 - `drift_false_alarm_rate`) quantile, floored by the configured
fixed threshold so a degenerate reference (a constant feature, a short history) cannot give a zero threshold.

Two choices, measured on stationary AR(1) series (phi 0.9, 0.98, 0.995; 365 days hourly as the reference,
30-day windows every 3 days, 20 seeds x 40 fresh 30-day windows after it; rate asked for: 1 %):
- Leave-window-out: each window is compared with the reference *without* that window. Live, the recent window
  is never part of its reference; a window inside its own reference is partly compared with itself, which
  biases the draws low. With the empirical quantile alone, fresh windows beat the threshold 5.4-7.1 % of the
  time with the window left in, 3.0-5.1 % with it left out.
- A fitted tail beside the empirical quantile: overlapping windows are far from independent (a year holds
  about twelve independent 30-day windows), so the empirical 99 % quantile is little more than their maximum,
  which fresh windows beat 3-5 % of the time, as above. A log-normal fitted to the draws (positive, right-skewed
  statistics) extrapolates the tail from their mean and spread, which twelve windows do estimate. Taking the
  larger of the two, fresh windows beat the threshold 0.5-2.8 % of the time (PSI) and 0.5-1.1 % (KS).
  (itff_platform_tests/monitoring/test_drift_calibration.py checks <= 3 %.)

Everything is vectorised over windows, which are row ranges of the time-sorted reference: a window's bin
counts are a difference of running counts, and its KS against the rest follows from its KS against the whole
reference (see leave_window_out_ks), for which only the window's own values are sorted.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, cast

import numpy as np
import polars as pl
from scipy.stats import norm

from itff_platform.monitoring.drift import THRESHOLD_SCHEMA, psi_from_shares, regime_categories, regime_labels
from itff_platform.settings import Settings

# Fewer draws than this say too little about the statistic's spread to fit a tail to: the floors stand alone.
MIN_CALIBRATION_WINDOWS = 5
# A window holding less than this share of a full window's bars (it straddles a gap in the data) would measure
# the noise of a smaller sample, not the statistic of a full window: it is left out.
MIN_WINDOW_FILL = 0.5
# Draws this far below the floor all mean "no drift at all"; in log space they would only stretch the fitted spread.
LOG_FLOOR_FRACTION = 0.01


def window_bounds(timestamps: pl.Series, window: timedelta, step: timedelta, bar: timedelta) -> np.ndarray:
    """(windows x 2) row ranges [start, end) of `timestamps` (sorted ascending) that each window holds. Windows
    of `window` length start at the first bar and every `step` after, as long as they end by the last bar's
    close; windows less than MIN_WINDOW_FILL full are dropped. No rows, or a reference shorter than one
    window: zero windows."""
    if timestamps.is_empty():
        return np.zeros((0, 2), dtype=np.int64)
    if not timestamps.is_sorted():
        raise ValueError("timestamps: windows are row ranges, so the reference must be sorted by timestamp")
    stamps = timestamps.dt.epoch("us").to_numpy()
    window_us, step_us, bar_us = (int(d / timedelta(microseconds=1)) for d in (window, step, bar))
    first, end = stamps[0], stamps[-1] + bar_us
    count = max((end - first - window_us) // step_us + 1, 0)
    starts = first + step_us * np.arange(count)
    bounds = np.column_stack([np.searchsorted(stamps, starts), np.searchsorted(stamps, starts + window_us)])
    filled: np.ndarray = bounds[bounds[:, 1] - bounds[:, 0] >= MIN_WINDOW_FILL * window_us / bar_us]
    return filled


def _leave_window_out_psi(onehot: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """PSI of each window's category counts against the rest of the reference's; `onehot` is (rows x bins),
    all zeros for a row without a value. NaN for a window (or a rest) holding no value."""
    running = np.vstack([np.zeros((1, onehot.shape[1])), np.cumsum(onehot, axis=0)])
    inside = running[bounds[:, 1]] - running[bounds[:, 0]]  # a window's counts: a difference of running counts
    rest = running[-1][None, :] - inside
    inside_total, rest_total = inside.sum(axis=1, keepdims=True), rest.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        draws = psi_from_shares(rest / rest_total, inside / inside_total)
    return np.where((inside_total[:, 0] > 0) & (rest_total[:, 0] > 0), draws, np.nan)


def decile_onehot(values: np.ndarray, bins: int = 10) -> np.ndarray:
    """(rows x bins) indicator of each value's bin, the bins cut as drift.psi cuts them (at the quantiles of
    `values`, repeated edges collapsed); a row without a finite value is all zeros."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros((len(values), 1))
    inner = np.unique(np.quantile(values[finite], np.linspace(0, 1, bins + 1)[1:-1]))
    onehot = np.zeros((len(values), len(inner) + 1))
    onehot[np.flatnonzero(finite), np.searchsorted(inner, values[finite], side="right")] = 1.0
    return onehot


def leave_window_out_psi(values: np.ndarray, bounds: np.ndarray, bins: int = 10) -> np.ndarray:
    """drift.psi of each window against the rest of the reference, one number per window (NaN/inf dropped).

    The bins are the deciles of the whole reference rather than of each rest: the rest is the reference less
    one window (~8 % of a year), so its deciles barely move, and one set of bins keeps this one matrix product."""
    return _leave_window_out_psi(decile_onehot(values, bins), bounds)


def one_bin_psi(counts: np.ndarray) -> float:
    """The PSI of a recent window wholly in one bin of a reference with these bin counts, for the bin the
    reference holds most of (the smallest such PSI): e.g. every recent value above the reference's top decile.
    NaN with no count."""
    total = counts.sum()
    if not total:
        return float("nan")
    shares = counts / total
    psi = cast(np.ndarray, psi_from_shares(np.broadcast_to(shares, (len(shares), len(shares))), np.eye(len(shares))))
    return float(psi.min())  # one PSI per row of the two matrices


def leave_window_out_ks(values: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Two-sample KS D of each window against the rest of the reference, one number per window (NaN/inf dropped).

    The rest's CDF is (N F_all - n F_window) / (N - n), so F_window - F_rest = N / (N - n) (F_window - F_all):
    D against the rest is N / (N - n) times D against the whole reference, which each window gets from its own
    sorted values and their ranks in the reference (a sort of each window, not of the reference per window).
    Between a window's values F_window is flat and F_all rises, so the gap peaks at a window value, just
    before it or at it."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    total = int(finite.sum())
    if not total or not len(bounds):
        return np.full(len(bounds), np.nan)
    ordered = np.sort(values[finite])
    at_or_below = np.searchsorted(ordered, values, side="right") / total  # F_all(x) of each row's value
    below = np.searchsorted(ordered, values, side="left") / total  # F_all just before it
    width = int((bounds[:, 1] - bounds[:, 0]).max())
    rows = bounds[:, :1] + np.arange(width)[None, :]
    held = rows < bounds[:, 1:]
    rows = np.minimum(rows, len(values) - 1)
    held &= finite[rows]
    by_value = np.argsort(np.where(held, values[rows], np.inf), axis=1, kind="stable")
    rows, held = np.take_along_axis(rows, by_value, axis=1), np.take_along_axis(held, by_value, axis=1)
    size = held.sum(axis=1, keepdims=True)
    rank = np.arange(1, width + 1)[None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        gap = np.maximum(rank / size - at_or_below[rows], below[rows] - (rank - 1) / size)
        whole = np.where(held, gap, -np.inf).max(axis=1)
        return np.where((size[:, 0] > 0) & (size[:, 0] < total), whole * total / (total - size[:, 0]), np.nan)


def calibrated_threshold(draws: np.ndarray, rate: float, floor: float, ceiling: float = np.inf) -> float:
    """max(floor, the draws' (1 - rate) quantile, the same quantile of a log-normal fitted to them), the fitted
    tail capped at `ceiling`; the module docstring says why the fitted tail. The floor alone with fewer than
    MIN_CALIBRATION_WINDOWS finite draws.

    `ceiling` is the statistic for a recent window wholly apart from the reference (KS 1, PSI one_bin_psi).
    Where the reference's own windows spread widely, the fitted tail can pass it, and past it no shift at all
    could be flagged; capped (a hair below, for float rounding), a recent window wholly apart always is."""
    draws = draws[np.isfinite(draws)]
    if len(draws) < MIN_CALIBRATION_WINDOWS:
        return float(floor)
    logs = np.log(np.maximum(draws, floor * LOG_FLOOR_FRACTION))
    fitted = min(np.exp(logs.mean() + norm.ppf(1 - rate) * logs.std(ddof=1)), ceiling * (1 - 1e-9))
    return float(max(floor, np.quantile(draws, 1 - rate), fitted))


def _bounds(reference: pl.DataFrame, settings: Settings) -> np.ndarray:
    return window_bounds(
        reference["timestamp"],
        timedelta(days=settings.monitoring.drift_recent_days),
        timedelta(days=settings.monitoring.drift_calibration_step_days),
        timedelta(seconds=settings.interval_seconds),
    )


def _warn_and_error(
    draws: np.ndarray, settings: Settings, warn_floor: float, error_floor: float, ceiling: float
) -> tuple[float, float]:
    error = calibrated_threshold(draws, settings.monitoring.drift_false_alarm_rate, error_floor, ceiling)
    # A warn above the error would never show: a warn floor set over a calibrated error is capped by it.
    return min(
        calibrated_threshold(draws, settings.monitoring.drift_warn_false_alarm_rate, warn_floor, ceiling), error
    ), error


def calibrated_thresholds(reference: pl.DataFrame, features: list[str], settings: Settings) -> pl.DataFrame:
    """PSI and KS warn/error thresholds of each feature, calibrated on `reference` (silver rows with a
    `timestamp`): a THRESHOLD_SCHEMA frame for drift.feature_drift, with the number of windows drawn."""
    reference = reference.sort("timestamp")
    bounds = _bounds(reference, settings)
    rows = []
    for feature in features:
        values = reference.get_column(feature).cast(pl.Float64).fill_null(float("nan")).to_numpy()
        onehot = decile_onehot(values)
        psi_draws, ks_draws = _leave_window_out_psi(onehot, bounds), leave_window_out_ks(values, bounds)
        psi_warn, psi_error = _warn_and_error(
            psi_draws,
            settings,
            settings.monitoring.drift_psi_warn,
            settings.monitoring.drift_psi_error,
            one_bin_psi(onehot.sum(axis=0)),
        )
        ks_warn, ks_error = _warn_and_error(
            ks_draws, settings, settings.monitoring.drift_ks_warn, settings.monitoring.drift_ks_error, 1.0
        )
        rows.append(
            {
                "feature": feature,
                "psi_warn": psi_warn,
                "psi_threshold": psi_error,
                "ks_warn": ks_warn,
                "ks_threshold": ks_error,
                "calibration_windows": int(np.isfinite(psi_draws).sum()),
            }
        )
    return pl.DataFrame(rows, schema=THRESHOLD_SCHEMA)


def regime_thresholds(reference: pl.DataFrame, settings: Settings) -> dict[str, Any]:
    """Warn/error thresholds of the regime mix's PSI, calibrated on `reference` (silver rows with `timestamp`
    and `regime`) the same way, floored by regime_shift_warn/error: the dict drift.regime_shift grades by."""
    reference = reference.sort("timestamp")
    labels = regime_labels(reference["regime"])
    categories = np.asarray(regime_categories(labels), dtype=object)
    onehot = (labels[:, None] == categories[None, :]).astype(np.float64)
    draws = _leave_window_out_psi(onehot, _bounds(reference, settings))
    warn, error = _warn_and_error(
        draws,
        settings,
        settings.monitoring.regime_shift_warn,
        settings.monitoring.regime_shift_error,
        one_bin_psi(onehot.sum(axis=0)),
    )
    return {"warn": warn, "threshold": error, "calibration_windows": int(np.isfinite(draws).sum())}
