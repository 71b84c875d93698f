"""Out-of-sample predictions over walk-forward folds, and the full evaluation of the chosen configuration."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from itff_platform.models.base import Forecaster, balanced_weights
from itff_platform.training import metrics as m
from itff_platform.training import plots
from itff_platform.training.backtest import allows_short, backtest
from itff_platform.training.dataset import TrainingData
from itff_platform.training.splits import Fold


def fold_loss(data: TrainingData, truth: np.ndarray, prediction: np.ndarray) -> float:
    if data.task == "regression":
        return m.pinball_loss(truth, prediction)
    return float(m.log_loss(truth, prediction, labels=[0, 1]))


def sample_weights(data: TrainingData, rows: np.ndarray, weighting: str) -> np.ndarray | None:
    return balanced_weights(data.y[rows]) if weighting == "balanced" and data.task == "classification" else None


def out_of_sample(
    make: Callable[[], Forecaster],
    data: TrainingData,
    folds: list[Fold],
    weighting: str = "none",
    on_fold: Callable[[int, float], None] | None = None,
) -> tuple[np.ndarray, list[float]]:
    """Fit on each fold's training rows, predict its test rows. Returns predictions for the concatenated test
    rows and the loss per fold; `on_fold` sees each loss as it arrives (Optuna's pruner does)."""
    predictions, losses = [], []
    for fold in folds:
        model = make().fit(data.x[fold.train], data.y[fold.train], sample_weights(data, fold.train, weighting))
        # Sequence models see the rows just before the window as history: past features, never labels.
        start = max(0, fold.test[0] - model.context_rows)
        prediction = model.predict_proba(data.x[start : fold.test[-1] + 1])[fold.test[0] - start :]
        predictions.append(prediction)
        losses.append(fold_loss(data, data.y[fold.test], prediction))
        if on_fold is not None:
            on_fold(fold.number, losses[-1])
    return np.concatenate(predictions), losses


@dataclass
class Evaluation:
    metrics: dict[str, float]
    threshold: float
    figures: dict[str, Path] = field(default_factory=dict)
    fold_table: pl.DataFrame | None = None
    recent_window: dict[str, str] = field(default_factory=dict)


def evaluate(data: TrainingData, folds: list[Fold], prediction: np.ndarray, fold_losses: list[float],
             settings, family: str, folder: Path) -> Evaluation:
    """Every metric and figure, on the concatenated out-of-sample rows."""
    test_rows = np.concatenate([f.test for f in folds])
    truth, stamps = data.y[test_rows], data.timestamps[test_rows]
    title = f"{data.symbol} {data.target} {family}"
    folder.mkdir(parents=True, exist_ok=True)
    fold_table = pl.DataFrame(
        {
            "fold": [f.number for f in folds],
            "train_rows": [len(f.train) for f in folds],
            "train_end": [str(data.timestamps[f.train[-1]])[:16] for f in folds],
            "test_start": [str(data.timestamps[f.test[0]])[:16] for f in folds],
            "test_end": [str(data.timestamps[f.test[-1]])[:16] for f in folds],
            "test_rows": [len(f.test) for f in folds],
            "loss": fold_losses,
        }
    )
    fold_table.write_csv(folder / "folds.csv")
    last = slice(len(truth) - len(folds[-1].test), None)  # the most recent out-of-sample window: promotion compares on it
    recent_window = {"recent_window_start": str(stamps[last][0])[:19], "recent_window_end": str(stamps[last][-1])[:19]}
    if data.task == "regression":
        result = m.regression_metrics(truth, prediction, data.close[test_rows])
        result["recent_pinball_loss"] = m.pinball_loss(truth[last], prediction[last])
        figures = {"quantile_bands": plots.quantile_band_plot(stamps, truth, prediction, title, folder / "quantile_bands.png")}
        return Evaluation({**result, "oos_rows": len(truth)}, threshold=float("nan"), figures=figures, fold_table=fold_table,
                          recent_window=recent_window)

    forward = data.forward_return[test_rows]
    h, fees = settings.label_horizon, settings.fees_bps
    shorts = allows_short(data.target)
    sweep = m.threshold_sweep(truth, prediction, forward, h, fees, shorts)
    sweep.write_csv(folder / "threshold_sweep.csv")
    # The deployed threshold may look at every fold; the reported figures may not (see walk_forward_thresholds).
    threshold = m.choose_threshold(truth, prediction, forward, h, fees, settings.min_trades, settings.default_threshold, shorts)
    honest = m.walk_forward_thresholds(truth, prediction, forward, [len(f.test) for f in folds], h, fees,
                                       settings.min_trades, settings.default_threshold, shorts)
    periods_per_year = 365 * settings.bars_per_day / h
    traded = backtest(prediction, forward, honest, fees, h, periods_per_year, shorts)
    metrics = {
        **m.classification_metrics(truth, prediction, honest),
        **m.regime_metrics(truth, prediction, data.regimes[test_rows]),
        **{f"backtest_{k}": v for k, v in traded.metrics.items()},
        "threshold": threshold,
        "oos_rows": len(truth),
        "recent_log_loss": float(m.log_loss(truth[last], prediction[last], labels=[0, 1])),
        "recent_ece": m.expected_calibration_error(truth[last], prediction[last]),
        "recent_trades": backtest(prediction[last], forward[last], honest[last], fees, h, periods_per_year, shorts).metrics["trades"],
    }
    figures = {
        "reliability": plots.reliability_diagram(truth, prediction, title, folder / "reliability.png"),
        "threshold_sweep": plots.threshold_sweep_plot(sweep, threshold, title, folder / "threshold_sweep.png"),
        "equity": plots.equity_plot(stamps[:: settings.label_horizon], traded.strategy_equity, traded.buy_and_hold_equity,
                                    f"{title}: out-of-sample, {settings.fees_bps:g} bps/side", folder / "equity.png"),
    }
    return Evaluation(metrics, threshold, figures, fold_table, recent_window)
