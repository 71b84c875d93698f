"""Has the data moved away from what the champion was trained on? PSI and KS per feature, PSI of the regime mix.

Population stability index, PSI = sum over bins of (actual% - expected%) * ln(actual% / expected%), with the
bins cut at the deciles of the reference (training) sample. The usual reading, and the settings' defaults:
below 0.1 no meaningful shift, 0.1-0.25 a moderate shift worth a look, above 0.25 a major shift.
The two-sample Kolmogorov-Smirnov D (largest gap between the two empirical CDFs) backs it up: PSI is
blind to moves inside one bin, KS to the tails.
Those fixed thresholds are floors: the evaluation grades each feature (and the regime mix) by thresholds
calibrated on how far the statistic moves within the reference period itself (monitoring.drift_calibration).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import polars as pl
from scipy.stats import ks_2samp

from itff_platform.rules import REGIMES
from itff_platform.settings import Settings

Severity = Literal["ok", "warn", "error"]
OK, WARN, ERROR = "ok", "warn", "error"
_RANK = {OK: 0, WARN: 1, ERROR: 2}

# A bin one side leaves empty would make ln(a/e) infinite; flooring the shares keeps PSI finite and still large.
SHARE_FLOOR = 1e-4
PSI_BINS = 10  # deciles of the reference, the usual PSI cut: each bin holds a tenth of the training rows


def grade(value: float, warn: float, error: float) -> str:
    """'error' at or above `error`, 'warn' at or above `warn`, else 'ok'. NaN (nothing to compare) grades 'ok':
    missing data is not evidence of drift, and the caller reports the row counts."""
    if value >= error:
        return ERROR
    if value >= warn:
        return WARN
    return OK


def worst(*statuses: str) -> str:
    return max(statuses, key=_RANK.__getitem__)


def _finite(values: npt.ArrayLike) -> np.ndarray:
    flat = np.asarray(values, dtype=np.float64).ravel()
    finite: np.ndarray = flat[np.isfinite(flat)]
    return finite


def psi_from_shares(expected: np.ndarray, actual: np.ndarray) -> np.ndarray | float:
    """PSI of share vectors along the last axis: one number for two vectors, one per row for two matrices."""
    expected, actual = np.maximum(expected, SHARE_FLOOR), np.maximum(actual, SHARE_FLOOR)
    psi: np.ndarray | float = np.sum((actual - expected) * np.log(actual / expected), axis=-1)
    return psi


def psi(expected: np.ndarray, actual: np.ndarray, bins: int = PSI_BINS) -> float:
    """PSI of `actual` against `expected`, bins at the quantiles of `expected` (deciles by default).

    The outer edges are -inf/+inf so values beyond the reference range still land in a bin; repeated edges
    (a constant or heavily tied feature) collapse, leaving fewer bins rather than empty zero-width ones.
    Shares are floored at 1e-4 so an empty bin costs a large but finite amount. NaN/inf are dropped; NaN
    when either side has nothing left. Rule of thumb: < 0.1 stable, 0.1-0.25 moderate, > 0.25 major shift.
    """
    expected, actual = _finite(expected), _finite(actual)
    if not len(expected) or not len(actual):
        return float("nan")
    inner = np.unique(np.quantile(expected, np.linspace(0, 1, bins + 1)[1:-1]))
    # Bin i holds [edge_i, edge_i+1) with edge_0 = -inf and the last edge +inf.
    count = len(inner) + 1
    expected_counts = np.bincount(np.searchsorted(inner, expected, side="right"), minlength=count)
    actual_counts = np.bincount(np.searchsorted(inner, actual, side="right"), minlength=count)
    return float(psi_from_shares(expected_counts / len(expected), actual_counts / len(actual)))


def ks_statistic(expected: np.ndarray, actual: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov D in [0, 1]; NaN/inf dropped, NaN when either side is empty."""
    expected, actual = _finite(expected), _finite(actual)
    if not len(expected) or not len(actual):
        return float("nan")
    return float(ks_2samp(expected, actual).statistic)


def category_shares(labels: npt.ArrayLike, categories: Sequence[str]) -> np.ndarray:
    """Share of `labels` in each category (labels outside `categories` are not counted); zeros when empty."""
    flat = np.asarray(labels, dtype=object).ravel()
    counts = (flat[:, None] == np.asarray(categories, dtype=object)[None, :]).sum(axis=0)
    total = counts.sum()
    return counts / total if total else np.zeros(len(categories))


def category_psi(expected_labels: npt.ArrayLike, actual_labels: npt.ArrayLike, categories: Sequence[str]) -> float:
    """PSI over categorical shares, e.g. the regime mix; NaN when either side has no labels in `categories`."""
    expected, actual = category_shares(expected_labels, categories), category_shares(actual_labels, categories)
    if not expected.any() or not actual.any():
        return float("nan")
    return float(psi_from_shares(expected, actual))


def _values(frame: pl.DataFrame, column: str) -> np.ndarray:
    return frame.get_column(column).cast(pl.Float64).fill_null(float("nan")).to_numpy()


THRESHOLD_SCHEMA = {
    "feature": pl.String,
    "psi_warn": pl.Float64,
    "psi_threshold": pl.Float64,
    "ks_warn": pl.Float64,
    "ks_threshold": pl.Float64,
    "calibration_windows": pl.Int64,
}
DRIFT_SCHEMA = {
    "feature": pl.String,
    "psi": pl.Float64,
    "ks": pl.Float64,
    **{k: v for k, v in THRESHOLD_SCHEMA.items() if k != "feature"},
    "psi_status": pl.String,
    "ks_status": pl.String,
    "status": pl.String,
}


def fixed_thresholds(features: list[str], settings: Settings) -> pl.DataFrame:
    """The configured PSI/KS thresholds for every feature, calibrated on no window: what grading uses when there
    is no reference period to calibrate on (see monitoring.drift_calibration)."""
    count = len(features)
    return pl.DataFrame(
        {
            "feature": features,
            "psi_warn": [settings.monitoring.drift_psi_warn] * count,
            "psi_threshold": [settings.monitoring.drift_psi_error] * count,
            "ks_warn": [settings.monitoring.drift_ks_warn] * count,
            "ks_threshold": [settings.monitoring.drift_ks_error] * count,
            "calibration_windows": [0] * count,
        },
        schema=THRESHOLD_SCHEMA,
    )


def _graded(statistic: str, warn: str, error: str) -> pl.Expr:
    """grade() over columns, one threshold pair per row; a null statistic (nothing to compare) grades 'ok'."""
    value = pl.col(statistic)
    return (
        pl.when(value >= pl.col(error))
        .then(pl.lit(ERROR))
        .when(value >= pl.col(warn))
        .then(pl.lit(WARN))
        .otherwise(pl.lit(OK))
    )


def _worse(left: str, right: str) -> pl.Expr:
    """worst() of two status columns."""

    def either(status: str) -> pl.Expr:
        return (pl.col(left) == status) | (pl.col(right) == status)

    return pl.when(either(ERROR)).then(pl.lit(ERROR)).when(either(WARN)).then(pl.lit(WARN)).otherwise(pl.lit(OK))


def feature_drift(
    reference: pl.DataFrame,
    recent: pl.DataFrame,
    features: list[str],
    settings: Settings,
    thresholds: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """PSI and KS of each feature, recent window against the reference (training) window, graded by each
    feature's thresholds (a THRESHOLD_SCHEMA frame, e.g. from drift_calibration.calibrated_thresholds; the
    settings' fixed ones when None); `status` is the worse of the two. Most drifted first."""
    thresholds = fixed_thresholds(features, settings) if thresholds is None else thresholds
    missing = sorted(set(features) - set(thresholds["feature"]))
    if missing:
        raise ValueError(f"thresholds: no row for feature(s) {missing}")
    rows = []
    for feature in features:
        before, after = _values(reference, feature), _values(recent, feature)
        rows.append({"feature": feature, "psi": psi(before, after), "ks": ks_statistic(before, after)})
    # NaN compares above every number in polars and would sort first; nothing-to-compare rows are null instead.
    measured = pl.DataFrame(rows, schema={"feature": pl.String, "psi": pl.Float64, "ks": pl.Float64}).with_columns(
        pl.col("psi", "ks").fill_nan(None)
    )
    return (
        measured.join(thresholds.select(list(THRESHOLD_SCHEMA)), on="feature", how="left")
        .with_columns(
            psi_status=_graded("psi", "psi_warn", "psi_threshold"), ks_status=_graded("ks", "ks_warn", "ks_threshold")
        )
        .with_columns(status=_worse("psi_status", "ks_status"))
        .select(list(DRIFT_SCHEMA))
        .sort("psi", descending=True, nulls_last=True)
    )


def regime_labels(regimes: pl.Series | npt.ArrayLike) -> np.ndarray:
    """Regime labels as a flat object array; a missing regime counts as 'unknown', as the rules call warm-up."""
    if not isinstance(regimes, pl.Series):
        regimes = pl.Series(np.asarray(regimes, dtype=object).ravel().tolist(), dtype=pl.String)
    labels: np.ndarray = regimes.cast(pl.String).fill_null("unknown").to_numpy().astype(object)
    return labels


def regime_shift(
    reference_regimes: pl.Series | npt.ArrayLike,
    recent_regimes: pl.Series | npt.ArrayLike,
    settings: Settings,
    thresholds: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """PSI of the regime mix, recent against reference, graded by `thresholds` ({"warn", "threshold",
    "calibration_windows"}, e.g. from drift_calibration.regime_thresholds; regime_shift_warn/error when None).

    Returns {"psi", "status", "warn", "threshold", "calibration_windows", "reference_shares": {regime: share},
    "recent_shares": {regime: share}}; the shares cover every known regime (and any unexpected label seen), so
    the two dicts line up for plotting."""
    thresholds = thresholds or {
        "warn": settings.monitoring.regime_shift_warn,
        "threshold": settings.monitoring.regime_shift_error,
        "calibration_windows": 0,
    }
    before, after = regime_labels(reference_regimes), regime_labels(recent_regimes)
    categories = regime_categories(before, after)
    mix_psi = category_psi(before, after, categories)
    return {
        "psi": mix_psi,
        "status": grade(mix_psi, thresholds["warn"], thresholds["threshold"]),
        "warn": thresholds["warn"],
        "threshold": thresholds["threshold"],
        "calibration_windows": thresholds["calibration_windows"],
        "reference_shares": dict(zip(categories, category_shares(before, categories).tolist(), strict=True)),
        "recent_shares": dict(zip(categories, category_shares(after, categories).tolist(), strict=True)),
    }


def regime_categories(*labels: np.ndarray) -> list[str]:
    """The six regimes, then any unexpected label seen, sorted: one category list for every side compared."""
    extra = sorted(set(np.unique(np.concatenate(labels)).tolist()) - set(REGIMES))
    return [*REGIMES, *extra]
