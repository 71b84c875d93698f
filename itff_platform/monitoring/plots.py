"""PNG figures for the monitoring reports and Dagster metadata: feature drift, regime mix, live calibration
and live equity. Same look as the training figures, whose helpers do the drawing where they fit."""

from __future__ import annotations

import base64
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display here, and none needed
import matplotlib.pyplot as plt
import numpy as np
import polars as pl

from itff_platform.monitoring.drift import grade
from itff_platform.monitoring.quality import trade_return_after_fees
from itff_platform.rules import REGIMES
from itff_platform.training.plots import _finish, equity_plot, reliability_diagram

STATUS_COLOURS = {"ok": "tab:green", "warn": "tab:orange", "error": "tab:red"}


def drift_plot(drift: pl.DataFrame, title: str, path: Path, warn: float, error: float) -> Path:
    """Horizontal PSI bar per feature (a feature_drift frame), most drifted on top, with the warn/error lines
    (`warn`/`error`: the fixed floors) and, where the frame has them, each feature's calibrated error threshold."""
    shown = drift.filter(pl.col("psi").is_not_null()).reverse()  # barh draws bottom-up
    fig, axis = plt.subplots(figsize=(6, 1.5 + 0.22 * max(shown.height, 1)))
    calibrated = "psi_threshold" in shown.columns
    statuses = shown["psi_status"] if calibrated else [grade(value, warn, error) for value in shown["psi"]]
    axis.barh(shown["feature"].to_list(), shown["psi"].to_numpy(), color=[STATUS_COLOURS[s] for s in statuses])
    if calibrated:
        axis.scatter(
            shown["psi_threshold"].to_numpy(),
            shown["feature"].to_list(),
            marker="|",
            s=120,
            color="black",
            zorder=3,
            label="calibrated error threshold",
        )
    axis.axvline(
        warn, color="tab:orange", linestyle="--", label=f"warn floor {warn:g}" if calibrated else f"warn {warn:g}"
    )
    axis.axvline(
        error, color="tab:red", linestyle="--", label=f"error floor {error:g}" if calibrated else f"error {error:g}"
    )
    axis.set_xlabel("population stability index (recent vs training)")
    return _finish(fig, axis, title, path)


def regime_mix_plot(
    reference_shares: dict[str, float], recent_shares: dict[str, float], title: str, path: Path
) -> Path:
    """Grouped bars: each regime's share of bars in the reference window and in the recent one."""
    seen = set(reference_shares) | set(recent_shares)
    regimes = [r for r in REGIMES if r in seen] + sorted(seen - set(REGIMES))
    x, width = np.arange(len(regimes)), 0.4
    fig, axis = plt.subplots(figsize=(7, 3.5))
    axis.bar(x - width / 2, [reference_shares.get(r, 0.0) for r in regimes], width, label="training window")
    axis.bar(x + width / 2, [recent_shares.get(r, 0.0) for r in regimes], width, label="recent window")
    axis.set_xticks(x, [r.replace("_", "\n") for r in regimes])  # on one line, "trending_down" runs into its neighbours
    axis.set_ylabel("share of bars")
    return _finish(fig, axis, title, path)


def live_reliability_plot(realized: pl.DataFrame, title: str, path: Path, bins: int = 10) -> Path:
    """The training reliability diagram, on the realized classification predictions (prob_up against label)."""
    scored = realized.filter(pl.col("prob_up").is_not_null() & pl.col("label").is_not_null())
    return reliability_diagram(
        scored["label"].cast(pl.Int64).to_numpy(), scored["prob_up"].to_numpy(), title, path, bins
    )


def live_equity_plot(
    realized: pl.DataFrame, fees_bps: float, title: str, path: Path, horizon: int = 1, time_column: str = "bar_time"
) -> Path:
    """Equity of trading the served signals against buy-and-hold, for one symbol x target in time order.

    Like the backtest, only every `horizon`-th prediction is taken so holding periods never overlap (each
    realized forward_return spans `horizon` bars) and each trade pays fees on both sides."""
    rows = realized.filter(pl.col("forward_return").is_not_null()).sort(time_column).gather_every(horizon)
    net = rows.select(trade_return_after_fees(fees_bps).fill_null(0.0)).to_series().to_numpy()
    move = rows["forward_return"].to_numpy()
    strategy = np.exp(np.cumsum(net))
    buy_and_hold = np.exp(np.cumsum(move) - 2 * fees_bps / 1e4)
    return equity_plot(rows[time_column].to_numpy(), strategy, buy_and_hold, title, path)


def embed_png(path: Path, title: str | None = None) -> str:
    """A markdown image with the PNG inlined, for MetadataValue.md (the Dagster UI cannot reach local files)."""
    encoded = base64.b64encode(Path(path).read_bytes()).decode()
    return f"![{title or Path(path).stem}](data:image/png;base64,{encoded})"
