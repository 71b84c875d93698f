"""Join logged predictions with what the market then did, once the label horizon has passed.

A bar may be asked about many times (retries, dashboards): live quality counts each
(symbol, target, bar, model version) once, the first answer given, so busy clients do not weigh more."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast

import numpy as np
import polars as pl

from itff_platform.contracts.consensus import ENSEMBLE_PREFIX
from itff_platform.settings import Settings

SUMMARY_METRICS = (
    "hit_rate",
    "brier",
    "log_loss",
    "ece",
    "mape",
    "n",
    "trades",
    "profit_factor",
    "max_drawdown",
    "latency_p95_ms",
)


def realized_predictions(log: pl.DataFrame, silver: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """Predictions whose outcome is known, with label, forward_return and close; and how many still wait."""
    asked = (
        log.filter(pl.col("bar_time").is_not_null())
        .sort("logged_at")
        .unique(["symbol", "target", "bar_time", "model_version"], keep="first", maintain_order=True)
    )
    outcomes = silver.select(
        "symbol",
        pl.col("timestamp").alias("bar_time"),
        "close",
        "forward_return",
        pl.col("direction").cast(pl.Float64),
        pl.col("level_up").cast(pl.Float64),
    )
    joined = asked.join(outcomes, on=["symbol", "bar_time"], how="left")
    # The realized class of each classification target; forward_return is judged on forward_return itself.
    label = (
        pl.when(pl.col("target") == "direction")
        .then(pl.col("direction"))
        .when(pl.col("target") == "level_up")
        .then(pl.col("level_up"))
    )
    joined = joined.with_columns(label=label)
    known = pl.col("forward_return").is_not_null() & (
        (pl.col("target") == "forward_return") | pl.col("label").is_not_null()
    )
    realized = joined.filter(known)
    return realized, joined.height - realized.height


def realized_from_lake(settings: Settings, log: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    from itff_platform.lake.delta import read_rows
    from itff_platform.lake.layers import LakeTables

    dated = log.filter(pl.col("bar_time").is_not_null())
    if dated.is_empty():
        return realized_predictions(log, _empty_silver())
    start = cast(datetime, dated["bar_time"].min())  # non-empty, nulls filtered out: a datetime
    end = cast(datetime, dated["bar_time"].max()) + timedelta(
        seconds=settings.interval_seconds * (settings.features.label_horizon + 1)
    )
    silver = read_rows(LakeTables.under(settings).silver, settings.interval, start=start, end=end)
    return realized_predictions(log, silver.filter(pl.col("symbol").is_in(dated["symbol"].unique().to_list())))


def _empty_silver() -> pl.DataFrame:
    return pl.DataFrame(
        schema={
            "symbol": pl.String,
            "timestamp": pl.Datetime("us", "UTC"),
            "close": pl.Float64,
            "forward_return": pl.Float64,
            "direction": pl.Int8,
            "level_up": pl.Int8,
        }
    )


def summary_path(settings: Settings) -> Path:
    return settings.reports_dir / "live_quality.json"


def write_quality_summary(settings: Settings, quality: pl.DataFrame) -> None:
    """The overall live metrics of each symbol x target's most recently serving version (the champion, unless
    it has not answered since it took over) as flat rows, for the service's prediction_quality_metric gauge.
    /consensus ensembles keep their own rows in `quality`, but the gauge is the served versions'."""
    current = quality.filter(pl.col("scope") == "all", ~pl.col("model_version").str.starts_with(ENSEMBLE_PREFIX))
    if "last_bar" in current.columns:
        current = current.sort("last_bar").unique(["symbol", "target"], keep="last", maintain_order=True)
    rows = []
    for row in current.iter_rows(named=True):
        # JSON has no infinity (a profit factor with no losing trade): such a figure is left out, not faked.
        rows += [
            {"symbol": row["symbol"], "target": row["target"], "metric": m, "value": float(row[m])}
            for m in SUMMARY_METRICS
            if row.get(m) is not None and np.isfinite(row[m])
        ]
    path = summary_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1))


DRIFT_STATISTICS = ("psi", "ks")


def drift_summary_path(settings: Settings) -> Path:
    return settings.reports_dir / "feature_drift.json"


def write_drift_summary(settings: Settings, drift: pl.DataFrame) -> None:
    """drift_monitor's PSI and KS per symbol and feature as flat rows, for the service's itff_feature_drift gauge:
    Grafana shows drift beside live quality, though only Dagster computes it."""
    rows = [
        {"symbol": row["symbol"], "feature": row["feature"], "statistic": name, "value": float(row[name])}
        for row in (drift.iter_rows(named=True) if drift.height else [])
        for name in DRIFT_STATISTICS
        if row.get(name) is not None and np.isfinite(row[name])
    ]
    path = drift_summary_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1))


def read_drift_summary(settings: Settings) -> list[dict[str, Any]]:
    return _read_rows(drift_summary_path(settings))


def read_quality_summary(settings: Settings) -> list[dict[str, Any]]:
    return _read_rows(summary_path(settings))


def _read_rows(path: Path) -> list[dict[str, Any]]:
    try:
        return json.loads(path.read_text()) if path.exists() else []
    except (OSError, ValueError):  # a half-written file must not break the service's poll
        return []
