"""PNG figures for MLflow artifacts and Dagster metadata: reliability, threshold sweep, equity curve."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")  # no display here, and none needed
import matplotlib.pyplot as plt
import numpy as np
import polars as pl

from itff_platform.training.metrics import RELIABILITY_BINS, expected_calibration_error, reliability_bins

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _finish(fig: Figure, axis: Axes, title: str, path: Path, dates: bool = False) -> Path:
    axis.set_title(title)
    axis.legend()
    if dates:
        fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _reliability_curve(labels: np.ndarray, prob: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each bin's mean probability and observed frequency, NaN where it is empty (a gap in the line), and rows."""
    counts, filled_p, filled_rate = reliability_bins(labels, prob, bins)
    mean_p, rate = np.full(bins, np.nan), np.full(bins, np.nan)
    mean_p[counts > 0], rate[counts > 0] = filled_p, filled_rate
    return mean_p, rate, counts


def reliability_diagram(
    labels: np.ndarray,
    prob: np.ndarray,
    title: str,
    path: Path,
    bins: int = RELIABILITY_BINS,
    before: np.ndarray | None = None,
) -> Path:
    """Observed frequency against predicted probability; with `before`, the uncalibrated model's curve too."""
    edges = np.linspace(0, 1, bins + 1)
    mean_p, rate, counts = _reliability_curve(labels, prob, bins)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    top.plot([0, 1], [0, 1], "--", color="grey", label="perfectly calibrated")
    if before is not None and not np.array_equal(before, prob):
        raw_p, raw_rate, _ = _reliability_curve(labels, before, bins)
        top.plot(
            raw_p,
            raw_rate,
            "s:",
            color="tab:orange",
            alpha=0.8,
            label=f"before calibration (ECE {expected_calibration_error(labels, before):.3f})",
        )
    top.plot(mean_p, rate, "o-", color="tab:blue", label=f"served (ECE {expected_calibration_error(labels, prob):.3f})")
    top.set_ylabel("observed frequency of 1")
    top.set_title(title)
    top.legend(loc="upper left")
    bottom.bar(edges[:-1] + 0.05, counts, width=0.09)
    bottom.set_xlabel("predicted probability")
    bottom.set_ylabel("rows")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def threshold_sweep_plot(sweep: pl.DataFrame, chosen: float, title: str, path: Path) -> Path:
    fig, left = plt.subplots(figsize=(6, 4))
    for column in ("precision", "recall", "f1"):
        left.plot(sweep["threshold"], sweep[column], label=column)
    left.axvline(chosen, color="black", linestyle=":", label=f"chosen {chosen:.2f}")
    left.set_xlabel("threshold on P(up)")
    left.set_ylim(0, 1)
    right = left.twinx()
    right.plot(sweep["threshold"], sweep["profit_factor"], color="tab:red", label="profit factor")
    right.axhline(1.0, color="tab:red", linestyle="--", linewidth=0.8)
    right.set_ylabel("profit factor after fees")
    left.legend(loc="lower left")
    left.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def equity_plot(timestamps: np.ndarray, strategy: np.ndarray, buy_and_hold: np.ndarray, title: str, path: Path) -> Path:
    fig, axis = plt.subplots(figsize=(7, 3.5))
    axis.plot(timestamps, strategy, label="strategy (after fees)")
    axis.plot(timestamps, buy_and_hold, label="buy and hold", alpha=0.7)
    axis.axhline(1.0, color="grey", linewidth=0.8)
    axis.set_ylabel("equity (start = 1)")
    return _finish(fig, axis, title, path, dates=True)


def quantile_band_plot(
    timestamps: np.ndarray, actual: np.ndarray, bands: np.ndarray, title: str, path: Path, last: int = 300
) -> Path:
    fig, axis = plt.subplots(figsize=(7, 3.5))
    t = timestamps[-last:]
    axis.fill_between(t, bands[-last:, 0], bands[-last:, 2], alpha=0.3, label="P10..P90")
    axis.plot(t, bands[-last:, 1], label="P50")
    axis.plot(t, actual[-last:], ".", markersize=3, color="black", label="realised")
    return _finish(fig, axis, title, path, dates=True)
