"""The metric names every family reports, so MLflow shows studies side by side."""

from __future__ import annotations

import numpy as np
import polars as pl
from sklearn.metrics import brier_score_loss, f1_score, log_loss, precision_score, recall_score, roc_auc_score

from itff_platform.rules import REGIMES

RELIABILITY_BINS = 10  # equal-width bins of 0.1, the usual ECE: coarse enough that a month of hourly rows fills them
EVEN_ODDS = 0.5  # accuracy and hit rate call "up" above even odds, whatever threshold the trading rule uses
MIN_REGIME_ROWS = 20  # a regime with fewer out-of-sample rows gets no AUC or hit rate: too few to mean anything
QUANTILES = (0.1, 0.5, 0.9)  # the regression families' P10/P50/P90, scored by pinball loss
LOG_LOSS_EPS = 1e-15  # as sklearn's log_loss clips: a certain, wrong answer costs a large but finite loss
THRESHOLDS = np.round(np.arange(0.50, 0.705, 0.01), 2)  # the trading thresholds swept: 0.50 .. 0.70 by 0.01
TIE = 1e-12  # returns closer than this are a tie, which goes to the lower threshold


def reliability_bins(
    labels: np.ndarray, prob: np.ndarray, bins: int = RELIABILITY_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows in each of `bins` equal-width bins, and for the non-empty ones (in order) the mean predicted
    probability and the observed frequency of 1. sklearn's calibration_curve gives the means but not the counts,
    so they are counted here with its own binning: bins closed on the right, (0.1, 0.2], the first one [0, 0.1]."""
    from sklearn.calibration import calibration_curve

    counts = np.bincount(np.searchsorted(np.linspace(0.0, 1.0, bins + 1)[1:-1], prob), minlength=bins)
    if not len(prob):
        return counts, np.empty(0), np.empty(0)
    rate, mean_p = calibration_curve(labels, prob, n_bins=bins, strategy="uniform")
    return counts, mean_p, rate


def expected_calibration_error(labels: np.ndarray, prob: np.ndarray, bins: int = RELIABILITY_BINS) -> float:
    """The gap between predicted probability and observed frequency, averaged over equal-width bins weighted
    by their rows."""
    counts, mean_p, rate = reliability_bins(labels, prob, bins)
    filled = counts[counts > 0]
    return float(np.sum(filled * np.abs(mean_p - rate)) / max(len(prob), 1))


def safe_auc(labels: np.ndarray, prob: np.ndarray) -> float:
    return float(roc_auc_score(labels, prob)) if len(np.unique(labels)) == 2 else float("nan")


def classification_metrics(labels: np.ndarray, prob: np.ndarray, threshold: float | np.ndarray) -> dict[str, float]:
    """Probability quality, plus precision/recall/F1 of calling 'up' at the threshold (one, or one per row)."""
    called = (prob >= threshold).astype(int)
    return {
        "log_loss": float(log_loss(labels, prob, labels=[0, 1])),
        "roc_auc": safe_auc(labels, prob),
        "accuracy": float(((prob >= EVEN_ODDS).astype(int) == labels).mean()),
        "brier": float(brier_score_loss(labels, prob)),
        "ece": expected_calibration_error(labels, prob),
        "precision": float(precision_score(labels, called, zero_division=0)),
        "recall": float(recall_score(labels, called, zero_division=0)),
        "f1": float(f1_score(labels, called, zero_division=0)),
    }


def regime_metrics(labels: np.ndarray, prob: np.ndarray, regimes: np.ndarray) -> dict[str, float]:
    out = {}
    for regime in REGIMES:
        mine = regimes == regime
        if mine.sum() >= MIN_REGIME_ROWS:
            out[f"auc_{regime}"] = safe_auc(labels[mine], prob[mine])
            out[f"hit_rate_{regime}"] = float(((prob[mine] >= EVEN_ODDS).astype(int) == labels[mine]).mean())
    return out


def row_losses(task: str, actual: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """The loss of every row on its own (log loss, or pinball loss averaged over the three quantiles): what the
    significance tests compare row for row. Their means are the fold losses the studies optimise."""
    if task == "regression":
        diff = actual[:, None] - prediction
        q = np.array(QUANTILES)
        pinball: np.ndarray = np.maximum(q * diff, (q - 1) * diff).mean(axis=1)
        return pinball
    p = np.clip(prediction, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
    log_losses: np.ndarray = -(actual * np.log(p) + (1 - actual) * np.log(1 - p))
    return log_losses


def pinball_loss(actual: np.ndarray, bands: np.ndarray, quantiles: tuple[float, ...] = QUANTILES) -> float:
    losses = []
    for i, q in enumerate(quantiles):
        diff = actual - bands[:, i]
        losses.append(np.mean(np.maximum(q * diff, (q - 1) * diff)))
    return float(np.mean(losses))


def regression_metrics(actual: np.ndarray, bands: np.ndarray, close: np.ndarray) -> dict[str, float]:
    """MAE of the median log return; MAPE of the implied price close*exp(P50) against the realised price
    (a MAPE of returns themselves explodes near zero); how often the outcome lands inside P10..P90."""
    realised_price, forecast_price = close * np.exp(actual), close * np.exp(bands[:, 1])
    return {
        "mae": float(np.mean(np.abs(actual - bands[:, 1]))),
        "mape": float(np.mean(np.abs(forecast_price - realised_price) / realised_price)),
        "band_coverage": float(np.mean((actual >= bands[:, 0]) & (actual <= bands[:, 2]))),
        "pinball_loss": pinball_loss(actual, bands),
    }


def threshold_sweep(
    labels: np.ndarray,
    prob: np.ndarray,
    forward_return: np.ndarray,
    horizon: int,
    fees_bps: float,
    allow_short: bool = True,
) -> pl.DataFrame:
    from itff_platform.training.backtest import backtest

    rows = []
    for threshold in THRESHOLDS:
        bt = backtest(
            prob, forward_return, threshold, fees_bps, horizon, periods_per_year=1, allow_short=allow_short
        ).metrics
        rows.append(
            {
                "threshold": float(threshold),
                **calls_at(labels, prob, threshold),
                "profit_factor": bt["profit_factor"],
                "trades": bt["trades"],
                "strategy_return": bt["strategy_return"],
            }
        )
    return pl.DataFrame(rows)


def calls_at(labels: np.ndarray, prob: np.ndarray, threshold: float) -> dict[str, float]:
    """Precision, recall and F1 of calling "up" at the threshold: the sweep's part of classification_metrics,
    without recomputing log loss, AUC and ECE (which do not depend on it) 21 times per sweep."""
    called = prob >= threshold
    hits = float(np.sum(called & (labels == 1)))
    precision = hits / called.sum() if called.any() else 0.0
    recall = hits / np.sum(labels == 1) if np.any(labels == 1) else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}


def choose_threshold(
    labels: np.ndarray,
    prob: np.ndarray,
    forward_return: np.ndarray,
    horizon: int,
    fees_bps: float,
    min_trades: int,
    default: float,
    allow_short: bool = True,
) -> float:
    """The threshold whose trades earned the most after fees on these rows, among those trading at least
    `min_trades` times; `default` when none does. Ties go to the lower threshold."""
    sweep = threshold_sweep(labels, prob, forward_return, horizon, fees_bps, allow_short)
    best, best_return = default, -np.inf
    for threshold, earned in (
        sweep.filter(pl.col("trades") >= min_trades).select("threshold", "strategy_return").iter_rows()
    ):
        if earned > best_return + TIE:
            best, best_return = float(threshold), earned
    return best


def walk_forward_thresholds(
    labels: np.ndarray,
    prob: np.ndarray,
    forward_return: np.ndarray,
    fold_sizes: list[int],
    horizon: int,
    fees_bps: float,
    min_trades: int,
    default: float,
    allow_short: bool = True,
) -> np.ndarray:
    """The deployed threshold rule, replayed: a threshold per out-of-sample row, chosen (as the deployed one is)
    from every fold before its own, so threshold-dependent figures (precision, recall, F1, the backtest) carry
    no selection bias. The first fold has nothing before it to choose from: NaN there, meaning no rule yet and
    no trades, rather than a default that no deployed model would ever trade with."""
    per_row, start = np.full(len(prob), np.nan), 0
    for size in fold_sizes:
        past = slice(0, start)
        if start:
            per_row[start : start + size] = choose_threshold(
                labels[past], prob[past], forward_return[past], horizon, fees_bps, min_trades, default, allow_short
            )
        start += size
    return per_row
