"""Has the data moved away from what the champion was trained on? PSI and KS per feature, PSI of the regime mix.

Population stability index, PSI = sum over bins of (actual% - expected%) * ln(actual% / expected%), with the
bins cut at the deciles of the reference (training) sample. The usual reading, and the settings' defaults:
below 0.1 no meaningful shift, 0.1-0.25 a moderate shift worth a look, above 0.25 a major shift.
The two-sample Kolmogorov-Smirnov D (largest gap between the two empirical CDFs) backs it up: PSI is
blind to moves inside one bin, KS to the tails.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import polars as pl
from scipy.stats import ks_2samp

from itff_platform.features.regime import REGIMES
from itff_platform.settings import Settings

Severity = Literal["ok", "warn", "error"]
OK, WARN, ERROR = "ok", "warn", "error"
_RANK = {OK: 0, WARN: 1, ERROR: 2}

# A bin one side leaves empty would make ln(a/e) infinite; flooring the shares keeps PSI finite and still large.
SHARE_FLOOR = 1e-4


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


def _finite(values) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).ravel()
    return values[np.isfinite(values)]


def _psi_from_shares(expected: np.ndarray, actual: np.ndarray) -> float:
    expected, actual = np.maximum(expected, SHARE_FLOOR), np.maximum(actual, SHARE_FLOOR)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def psi(expected: np.ndarray, actual: np.ndarray, bins: int = 10) -> float:
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
    return _psi_from_shares(expected_counts / len(expected), actual_counts / len(actual))


def ks_statistic(expected: np.ndarray, actual: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov D in [0, 1]; NaN/inf dropped, NaN when either side is empty."""
    expected, actual = _finite(expected), _finite(actual)
    if not len(expected) or not len(actual):
        return float("nan")
    return float(ks_2samp(expected, actual).statistic)


def category_shares(labels, categories: Sequence[str]) -> np.ndarray:
    """Share of `labels` in each category (labels outside `categories` are not counted); zeros when empty."""
    labels = np.asarray(labels, dtype=object).ravel()
    counts = (labels[:, None] == np.asarray(categories, dtype=object)[None, :]).sum(axis=0)
    total = counts.sum()
    return counts / total if total else np.zeros(len(categories))


def category_psi(expected_labels, actual_labels, categories: Sequence[str]) -> float:
    """PSI over categorical shares, e.g. the regime mix; NaN when either side has no labels in `categories`."""
    expected, actual = category_shares(expected_labels, categories), category_shares(actual_labels, categories)
    if not expected.any() or not actual.any():
        return float("nan")
    return _psi_from_shares(expected, actual)


def _values(frame: pl.DataFrame, column: str) -> np.ndarray:
    return frame.get_column(column).cast(pl.Float64).fill_null(float("nan")).to_numpy()


DRIFT_SCHEMA = {"feature": pl.String, "psi": pl.Float64, "ks": pl.Float64,
                "psi_status": pl.String, "ks_status": pl.String, "status": pl.String}


def feature_drift(reference: pl.DataFrame, recent: pl.DataFrame, features: list[str], settings: Settings) -> pl.DataFrame:
    """PSI and KS of each feature, recent window against the reference (training) window, graded by the
    settings' thresholds; `status` is the worse of the two. Most drifted first."""
    rows = []
    for feature in features:
        before, after = _values(reference, feature), _values(recent, feature)
        feature_psi, feature_ks = psi(before, after), ks_statistic(before, after)
        psi_status = grade(feature_psi, settings.drift_psi_warn, settings.drift_psi_error)
        ks_status = grade(feature_ks, settings.drift_ks_warn, settings.drift_ks_error)
        rows.append({"feature": feature, "psi": feature_psi, "ks": feature_ks, "psi_status": psi_status,
                     "ks_status": ks_status, "status": worst(psi_status, ks_status)})
    frame = pl.DataFrame(rows, schema=DRIFT_SCHEMA)
    # NaN would sort above every number; nothing-to-compare rows go last instead.
    return frame.with_columns(pl.col("psi", "ks").fill_nan(None)).sort("psi", descending=True, nulls_last=True)


def _labels(regimes) -> np.ndarray:
    """Regime labels as a flat object array; a missing regime counts as 'unknown', as the rules call warm-up."""
    if not isinstance(regimes, pl.Series):
        regimes = pl.Series(np.asarray(regimes, dtype=object).ravel().tolist(), dtype=pl.String)
    return regimes.cast(pl.String).fill_null("unknown").to_numpy().astype(object)


def regime_shift(reference_regimes, recent_regimes, settings: Settings) -> dict:
    """PSI of the regime mix, recent against reference, graded by regime_shift_warn/error.

    Returns {"psi", "status", "reference_shares": {regime: share}, "recent_shares": {regime: share}}; the
    shares cover every known regime (and any unexpected label seen), so the two dicts line up for plotting."""
    before, after = _labels(reference_regimes), _labels(recent_regimes)
    extra = sorted(set(np.unique(np.concatenate([before, after])).tolist()) - set(REGIMES))
    categories = [*REGIMES, *extra]
    mix_psi = category_psi(before, after, categories)
    return {
        "psi": mix_psi,
        "status": grade(mix_psi, settings.regime_shift_warn, settings.regime_shift_error),
        "reference_shares": dict(zip(categories, category_shares(before, categories).tolist())),
        "recent_shares": dict(zip(categories, category_shares(after, categories).tolist())),
    }
