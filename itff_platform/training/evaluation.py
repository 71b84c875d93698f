"""Out-of-sample predictions over walk-forward folds, and the full evaluation of the chosen configuration."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
from sklearn.metrics import log_loss

from itff_platform.contracts.signals import allows_short
from itff_platform.models.base import Forecaster, balanced_weights
from itff_platform.models.calibration import Calibrated
from itff_platform.rules import REGIMES
from itff_platform.training import metrics as m
from itff_platform.training import plots
from itff_platform.training.backtest import BacktestResult, backtest, combine_backtests, trading_metrics
from itff_platform.training.dataset import TrainingData
from itff_platform.training.significance import mean_above_zero_p_value
from itff_platform.training.splits import Fold

if TYPE_CHECKING:
    from itff_platform.settings import Settings


def fold_loss(data: TrainingData, truth: np.ndarray, prediction: np.ndarray) -> float:
    if data.task == "regression":
        return m.pinball_loss(truth, prediction)
    return float(log_loss(truth, prediction, labels=[0, 1]))


def sample_weights(data: TrainingData, rows: np.ndarray, weighting: str) -> np.ndarray | None:
    return balanced_weights(data.y[rows]) if weighting == "balanced" and data.task == "classification" else None


def out_of_sample(
    make: Callable[[], Forecaster],
    data: TrainingData,
    folds: list[Fold],
    weighting: str = "none",
    on_fold: Callable[[int, float, np.ndarray], None] | None = None,
) -> tuple[np.ndarray, list[float], np.ndarray]:
    """Fit on each fold's training rows, predict its test rows. Returns predictions for the concatenated test
    rows, the loss per fold, and the same predictions before calibration (for the reliability plot's "before");
    `on_fold` sees each fold's loss and per-row losses as they arrive (Optuna's pruner does)."""
    predictions, uncalibrated, losses = [], [], []
    for fold in folds:
        model = make().fit(data.x[fold.train], data.y[fold.train], sample_weights(data, fold.train, weighting))
        # Sequence models see the rows just before the window as history: past features, never labels.
        start = max(0, fold.test[0] - model.context_rows)
        window = data.x[start : fold.test[-1] + 1]
        raw, prediction = (
            model.predict_both(window) if isinstance(model, Calibrated) else (None, model.predict_proba(window))
        )
        predictions.append(prediction[fold.test[0] - start :])
        uncalibrated.append(predictions[-1] if raw is None else raw[fold.test[0] - start :])
        losses.append(fold_loss(data, data.y[fold.test], predictions[-1]))
        if on_fold is not None:
            on_fold(fold.number, losses[-1], m.row_losses(data.task, data.y[fold.test], predictions[-1]))
    return np.concatenate(predictions), losses, np.concatenate(uncalibrated)


@dataclass
class Evaluation:
    metrics: dict[str, float]
    threshold: float
    figures: dict[str, Path] = field(default_factory=dict)
    fold_table: pl.DataFrame | None = None
    recent_window: dict[str, str] = field(default_factory=dict)
    tradable: bool = False
    tradable_reason: str = ""
    regime_table: pl.DataFrame | None = None


OOS_FILE = "oos_predictions.parquet"  # per-row out-of-sample predictions: what promotion's significance tests read


def oos_frame(data: TrainingData, folds: list[Fold], prediction: np.ndarray) -> pl.DataFrame:
    """One row per out-of-sample bar: when, which fold, the truth, and the prediction (P(up), or P10/P50/P90)."""
    rows = np.concatenate([f.test for f in folds])
    frame = pl.DataFrame(
        {
            "timestamp": data.timestamps[rows],
            "fold": np.concatenate([np.full(len(f.test), f.number) for f in folds]),
            "holdout": np.concatenate([np.full(len(f.test), f is folds[-1]) for f in folds]),
            "label": data.y[rows],
        }
    )
    if data.task == "regression":
        return frame.with_columns(**{name: prediction[:, i] for i, name in enumerate(("p10", "p50", "p90"))})
    return frame.with_columns(prob_up=prediction)


def evaluate(
    data: TrainingData,
    folds: list[Fold],
    prediction: np.ndarray,
    fold_losses: list[float],
    settings: Settings,
    family: str,
    folder: Path,
    uncalibrated: np.ndarray | None = None,
) -> Evaluation:
    """Every metric and figure, on the concatenated out-of-sample rows."""
    test_rows = np.concatenate([f.test for f in folds])
    truth, stamps = data.y[test_rows], data.timestamps[test_rows]
    title = f"{data.symbol} {data.target} {family}"
    folder.mkdir(parents=True, exist_ok=True)
    oos_frame(data, folds, prediction).write_parquet(folder / OOS_FILE)
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
    last = slice(
        len(truth) - len(folds[-1].test), None
    )  # the most recent out-of-sample window: promotion compares on it
    recent_window = {"recent_window_start": str(stamps[last][0])[:19], "recent_window_end": str(stamps[last][-1])[:19]}
    if data.task == "regression":
        fold_table.write_csv(folder / "folds.csv")
        result = m.regression_metrics(truth, prediction, data.close[test_rows])
        result["recent_pinball_loss"] = m.pinball_loss(truth[last], prediction[last])
        result["recent_band_coverage"] = m.regression_metrics(
            truth[last], prediction[last], data.close[test_rows][last]
        )["band_coverage"]
        figures = {
            "quantile_bands": plots.quantile_band_plot(stamps, truth, prediction, title, folder / "quantile_bands.png")
        }
        return Evaluation(
            {**result, "oos_rows": len(truth)},
            threshold=float("nan"),
            figures=figures,
            fold_table=fold_table,
            recent_window=recent_window,
            tradable=False,
            tradable_reason="forward_return serves P10/P50/P90 bands: it has no trading rule",
        )
    return _evaluate_classifier(
        data, folds, prediction, uncalibrated, settings, title, folder, fold_table, recent_window
    )


def _evaluate_classifier(
    data: TrainingData,
    folds: list[Fold],
    prediction: np.ndarray,
    uncalibrated: np.ndarray | None,
    settings: Settings,
    title: str,
    folder: Path,
    fold_table: pl.DataFrame,
    recent_window: dict[str, Any],
) -> Evaluation:
    test_rows = np.concatenate([f.test for f in folds])
    truth, stamps, regimes = data.y[test_rows], data.timestamps[test_rows], data.regimes[test_rows]
    forward = data.forward_return[test_rows]
    h, fees = settings.features.label_horizon, settings.trading.fees_bps
    shorts = allows_short(data.target)
    periods_per_year = 365 * settings.bars_per_day / h
    sizes = [len(f.test) for f in folds]
    sweep = m.threshold_sweep(truth, prediction, forward, h, fees, shorts)
    sweep.write_csv(folder / "threshold_sweep.csv")
    # The deployed threshold is chosen on every fold. What is reported is that same rule replayed forward: each
    # fold traded at the threshold chosen from the folds before it (so the first fold does not trade).
    threshold = m.choose_threshold(
        truth, prediction, forward, h, fees, settings.trading.min_trades, settings.trading.default_threshold, shorts
    )
    rule = m.walk_forward_thresholds(
        truth,
        prediction,
        forward,
        sizes,
        h,
        fees,
        settings.trading.min_trades,
        settings.trading.default_threshold,
        shorts,
    )
    ruled = ~np.isnan(rule)
    # Each fold trades from its own first bar, every h bars; the whole is those trades end to end.
    fold_results = _fold_backtests(folds, prediction, forward, rule, settings, shorts, periods_per_year)
    traded = combine_backtests(list(fold_results.values()), periods_per_year)
    per_fold = _fold_table(fold_results, rule, sizes, folds)

    def at_decisions(values: np.ndarray) -> np.ndarray:  # the bars the combined backtest decided on
        return np.concatenate(
            [values[_fold_slice(sizes, i)][::h] for i, f in enumerate(folds) if f.number in fold_results]
        )

    per_regime = _regime_trading(traded, at_decisions(regimes), periods_per_year)
    last = slice(len(truth) - sizes[-1], None)
    recent = fold_results[folds[-1].number].metrics
    at_rule = m.classification_metrics(truth[ruled], prediction[ruled], rule[ruled])
    metrics = {
        **m.classification_metrics(truth, prediction, 0.5),
        **{k: at_rule[k] for k in ("precision", "recall", "f1")},  # what the deployed rule's calls achieved
        **m.regime_metrics(truth, prediction, regimes),
        **{f"backtest_{k}": v for k, v in traded.metrics.items()},
        **{
            f"fold{row['fold']}_{k}": row[k]
            for row in per_fold.iter_rows(named=True)
            for k in TRADING_COLUMNS
            if k in row
        },
        **{
            f"backtest_{k}_{row['regime']}": row[k] for row in per_regime.iter_rows(named=True) for k in TRADING_COLUMNS
        },
        "threshold": threshold,
        "oos_rows": len(truth),
        "recent_log_loss": float(log_loss(truth[last], prediction[last], labels=[0, 1])),
        "recent_ece": m.expected_calibration_error(truth[last], prediction[last]),
        "recent_trades": recent["trades"],
        "recent_profit_factor": recent["profit_factor"],
    }
    if uncalibrated is not None:
        metrics["ece_before_calibration"] = m.expected_calibration_error(truth, uncalibrated)
    tradable, reason, p_value = tradability(traded, settings)
    metrics["tradable_p_value"] = p_value
    fold_table = fold_table.join(per_fold, on="fold", how="left")
    fold_table.write_csv(folder / "folds.csv")
    per_regime.write_csv(folder / "regimes.csv")
    figures = {
        "reliability": plots.reliability_diagram(
            truth, prediction, title, folder / "reliability.png", before=uncalibrated
        ),
        "threshold_sweep": plots.threshold_sweep_plot(sweep, threshold, title, folder / "threshold_sweep.png"),
        "equity": plots.equity_plot(
            at_decisions(stamps),
            traded.strategy_equity,
            traded.buy_and_hold_equity,
            f"{title}: deployed rule walk-forward, {fees:g} bps/side",
            folder / "equity.png",
        ),
    }
    return Evaluation(metrics, threshold, figures, fold_table, recent_window, tradable, reason, per_regime)


TRADING_COLUMNS = ("trades", "profit_factor", "max_drawdown", "sharpe", "hit_rate_trades")


def _fold_slice(sizes: list[int], index: int) -> slice:
    start = sum(sizes[:index])
    return slice(start, start + sizes[index])


def _fold_backtests(
    folds: list[Fold],
    prediction: np.ndarray,
    forward: np.ndarray,
    rule: np.ndarray,
    settings: Settings,
    shorts: bool,
    periods_per_year: float,
) -> dict[int, BacktestResult]:
    """The deployed rule's backtest on each fold it traded (every fold but the first), by fold number."""
    sizes, results = [len(f.test) for f in folds], {}
    for i, fold in enumerate(folds):
        part = _fold_slice(sizes, i)
        if not np.isnan(rule[part]).all():
            results[fold.number] = backtest(
                prediction[part],
                forward[part],
                rule[part],
                settings.trading.fees_bps,
                settings.features.label_horizon,
                periods_per_year,
                shorts,
            )
    return results


def _fold_table(
    fold_results: dict[int, BacktestResult], rule: np.ndarray, sizes: list[int], folds: list[Fold]
) -> pl.DataFrame:
    rows = [
        {
            "fold": f.number,
            "threshold": float(rule[_fold_slice(sizes, i)][0]),
            **{k: fold_results[f.number].metrics[k] for k in TRADING_COLUMNS},
        }
        for i, f in enumerate(folds)
        if f.number in fold_results
    ]
    schema = {
        "fold": pl.Int64,
        "threshold": pl.Float64,
        "trades": pl.Int64,
        **{k: pl.Float64 for k in TRADING_COLUMNS[1:]},
    }
    return pl.DataFrame(rows, schema=schema)


def _regime_trading(traded: BacktestResult, decision_regimes: np.ndarray, periods_per_year: float) -> pl.DataFrame:
    """The deployed rule's walk-forward trading figures split by the regime of the bar each decision was made on."""
    rows = []
    assert traded.net_returns is not None and traded.positions is not None  # combine_backtests sets both
    for regime in REGIMES:
        mine = decision_regimes == regime
        if mine.any():
            figures = trading_metrics(traded.net_returns[mine], traded.positions[mine] != 0, periods_per_year)
            rows.append({"regime": regime, **{k: figures[k] for k in TRADING_COLUMNS}})
    schema = {"regime": pl.String, "trades": pl.Int64, **{k: pl.Float64 for k in TRADING_COLUMNS[1:]}}
    return pl.DataFrame(rows, schema=schema)


def tradability(traded: BacktestResult, settings: Settings) -> tuple[bool, str, float]:
    """Is the deployed rule worth trading? Its walk-forward trades (each fold at the threshold chosen before
    it, after fees) must earn more than zero with bootstrap p below `tradable_alpha`, with a profit factor
    above 1, at least `tradable_min_trades` trades and a drawdown within `tradable_max_drawdown`."""
    figures = traded.metrics
    assert traded.net_returns is not None and traded.positions is not None  # combine_backtests sets both
    trades = traded.net_returns[traded.positions != 0]
    p_value = mean_above_zero_p_value(trades)
    failed = []
    if figures["trades"] < settings.trading.tradable_min_trades:
        failed.append(f"{figures['trades']} trades < {settings.trading.tradable_min_trades}")
    if not figures["profit_factor"] > 1:
        failed.append(f"profit factor {figures['profit_factor']:.2f} <= 1")
    if figures["max_drawdown"] > settings.trading.tradable_max_drawdown:
        failed.append(f"drawdown {figures['max_drawdown']:.2f} > {settings.trading.tradable_max_drawdown}")
    if not p_value < settings.trading.tradable_alpha:
        failed.append(f"no significant edge (bootstrap p={p_value:.3f} >= {settings.trading.tradable_alpha})")
    summary = (
        f"deployed rule walk-forward after {settings.trading.fees_bps:g} bps/side: {figures['trades']} trades, "
        f"PF {figures['profit_factor']:.2f}, drawdown {figures['max_drawdown']:.2f}, p={p_value:.3f}"
    )
    return (not failed, summary + (": " + "; ".join(failed) if failed else ": significant edge"), p_value)
