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

Everything is vectorised over windows: one boolean (windows x rows) membership matrix per reference, bin counts
per window by one matrix product, KS by cumulative sums along the value-sorted rows.
"""

from __future__ import annotations

from datetime import timedelta

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


def window_membership(timestamps: pl.Series, window: timedelta, step: timedelta, bar: timedelta) -> np.ndarray:
    """Boolean (windows x rows): whether each row's timestamp lies in each window. Windows of `window` length
    start at the first bar and every `step` after, as long as they end by the last bar's close; windows less
    than MIN_WINDOW_FILL full are dropped. No rows, or a reference shorter than one window: zero windows."""
    if timestamps.is_empty():
        return np.zeros((0, 0), dtype=bool)
    stamps = timestamps.dt.epoch("us").to_numpy()
    window_us, step_us, bar_us = (int(d / timedelta(microseconds=1)) for d in (window, step, bar))
    first, end = stamps.min(), stamps.max() + bar_us
    count = (end - first - window_us) // step_us + 1
    if count <= 0:
        return np.zeros((0, len(stamps)), dtype=bool)
    starts = first + step_us * np.arange(count)
    members = (stamps[None, :] >= starts[:, None]) & (stamps[None, :] < starts[:, None] + window_us)
    return members[members.sum(axis=1) >= MIN_WINDOW_FILL * window_us / bar_us]


def _leave_window_out_psi(onehot: np.ndarray, members: np.ndarray) -> np.ndarray:
    """PSI of each window's category counts against the rest of the reference's; `onehot` is (rows x bins),
    all zeros for a row without a value. NaN for a window (or a rest) holding no value."""
    inside = (members.astype(np.float32) @ onehot.astype(np.float32)).astype(np.float64)  # float32 counts exactly to 2**24
    rest = onehot.sum(axis=0)[None, :] - inside
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


def leave_window_out_psi(values: np.ndarray, members: np.ndarray, bins: int = 10) -> np.ndarray:
    """drift.psi of each window against the rest of the reference, one number per window (NaN/inf dropped).

    The bins are the deciles of the whole reference rather than of each rest: the rest is the reference less
    one window (~8 % of a year), so its deciles barely move, and one set of bins keeps this one matrix product."""
    return _leave_window_out_psi(decile_onehot(values, bins), members)


def one_bin_psi(counts: np.ndarray) -> float:
    """The PSI of a recent window wholly in one bin of a reference with these bin counts, for the bin the
    reference holds most of (the smallest such PSI): e.g. every recent value above the reference's top decile.
    NaN with no count."""
    total = counts.sum()
    if not total:
        return float("nan")
    shares = counts / total
    return float(psi_from_shares(np.broadcast_to(shares, (len(shares), len(shares))), np.eye(len(shares))).min())


def leave_window_out_ks(values: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Two-sample KS D of each window against the rest of the reference, one number per window (NaN/inf dropped).

    Along the rows sorted by value, cumulative counts of window and rest rows are the two empirical CDFs (times
    their sizes); D is their largest gap, read where a run of tied values ends, as scipy's ks_2samp does."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.any():
        return np.full(len(members), np.nan)
    order = np.argsort(values[finite], kind="stable")
    ordered = values[finite][order]
    below_inside = np.cumsum(members[:, finite][:, order], axis=1, dtype=np.int32)
    below_rest = np.arange(1, len(ordered) + 1, dtype=np.int32)[None, :] - below_inside
    inside_size, rest_size = below_inside[:, -1:], below_rest[:, -1:]
    run_ends = np.r_[ordered[1:] != ordered[:-1], True]
    with np.errstate(divide="ignore", invalid="ignore"):
        gaps = np.abs(below_inside[:, run_ends] / inside_size - below_rest[:, run_ends] / rest_size)
    return np.where((inside_size[:, 0] > 0) & (rest_size[:, 0] > 0), gaps.max(axis=1, initial=0.0), np.nan)


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


def _membership(reference: pl.DataFrame, settings: Settings) -> np.ndarray:
    return window_membership(reference["timestamp"], timedelta(days=settings.drift_recent_days),
                             timedelta(days=settings.drift_calibration_step_days), timedelta(seconds=settings.interval_seconds))


def _warn_and_error(draws: np.ndarray, settings: Settings, warn_floor: float, error_floor: float,
                    ceiling: float) -> tuple[float, float]:
    error = calibrated_threshold(draws, settings.drift_false_alarm_rate, error_floor, ceiling)
    # A warn above the error would never show: a warn floor set over a calibrated error is capped by it.
    return min(calibrated_threshold(draws, settings.drift_warn_false_alarm_rate, warn_floor, ceiling), error), error


def calibrated_thresholds(reference: pl.DataFrame, features: list[str], settings: Settings) -> pl.DataFrame:
    """PSI and KS warn/error thresholds of each feature, calibrated on `reference` (silver rows with a
    `timestamp`): a THRESHOLD_SCHEMA frame for drift.feature_drift, with the number of windows drawn."""
    members = _membership(reference, settings)
    rows = []
    for feature in features:
        values = reference.get_column(feature).cast(pl.Float64).fill_null(float("nan")).to_numpy()
        onehot = decile_onehot(values)
        psi_draws, ks_draws = _leave_window_out_psi(onehot, members), leave_window_out_ks(values, members)
        psi_warn, psi_error = _warn_and_error(psi_draws, settings, settings.drift_psi_warn, settings.drift_psi_error,
                                              one_bin_psi(onehot.sum(axis=0)))
        ks_warn, ks_error = _warn_and_error(ks_draws, settings, settings.drift_ks_warn, settings.drift_ks_error, 1.0)
        rows.append({"feature": feature, "psi_warn": psi_warn, "psi_threshold": psi_error, "ks_warn": ks_warn,
                     "ks_threshold": ks_error, "calibration_windows": int(np.isfinite(psi_draws).sum())})
    return pl.DataFrame(rows, schema=THRESHOLD_SCHEMA)


def regime_thresholds(reference: pl.DataFrame, settings: Settings) -> dict:
    """Warn/error thresholds of the regime mix's PSI, calibrated on `reference` (silver rows with `timestamp`
    and `regime`) the same way, floored by regime_shift_warn/error: the dict drift.regime_shift grades by."""
    labels = regime_labels(reference["regime"])
    categories = np.asarray(regime_categories(labels), dtype=object)
    onehot = (labels[:, None] == categories[None, :]).astype(np.float64)
    draws = _leave_window_out_psi(onehot, _membership(reference, settings))
    warn, error = _warn_and_error(draws, settings, settings.regime_shift_warn, settings.regime_shift_error,
                                  one_bin_psi(onehot.sum(axis=0)))
    return {"warn": warn, "threshold": error, "calibration_windows": int(np.isfinite(draws).sum())}
