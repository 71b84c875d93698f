"""One evaluation: live quality of the logged predictions, feature and regime drift against the training
window, and the retrain decisions they lead to. Plain code; the Dagster assets and `itff replay` call it.

A model is sent for retraining when any of these is an error: at least `drift_features_for_retrain` features
of its symbol drifted (PSI or KS), its symbol's regime mix shifted, or its live log loss rose too far above
what its backtest promised."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import polars as pl

from itff_platform.settings import Settings

DECISION_SCHEMA = {"decided_at": pl.Datetime("us", "UTC"), "as_of": pl.Datetime("us", "UTC"), "symbol": pl.String,
                   "target": pl.String, "decision": pl.String, "reasons": pl.String}


@dataclass
class Evaluation:
    as_of: datetime
    logged: int = 0
    pending: int = 0
    realized: pl.DataFrame = field(default_factory=pl.DataFrame)
    quality: pl.DataFrame = field(default_factory=pl.DataFrame)
    degradation: list[dict] = field(default_factory=list)   # per model: symbol, target, expected and live log loss, status
    drift: dict[str, pl.DataFrame] = field(default_factory=dict)  # per symbol: feature_drift rows
    regime: dict[str, dict] = field(default_factory=dict)         # per symbol: regime_shift result
    decisions: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=DECISION_SCHEMA))
    expectations: dict[tuple[str, str], dict] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)

    def retrain(self) -> list[tuple[str, str]]:
        return [(r["symbol"], r["target"]) for r in self.decisions.filter(pl.col("decision") == "retrain").iter_rows(named=True)]


def champion_expectations(settings: Settings) -> dict[tuple[str, str], dict]:
    """What each champion's walk-forward backtest promised (its out-of-sample metrics), its version and its
    last training bar."""
    from mlflow import MlflowClient

    from itff_platform.training.promotion import champion_versions

    client = MlflowClient(settings.tracking_uri)
    found = {}
    for key, version in champion_versions(settings).items():
        run = client.get_run(version.run_id)
        found[key] = {"version": str(version.version), "trained_through": run.data.tags.get("trained_through"), **run.data.metrics}
    return found


def evaluate(settings: Settings, as_of: datetime | None = None, reports_dir: Path | None = None,
             with_plots: bool = True) -> Evaluation:
    """Outcomes, then drift and decisions: what the weekly evaluation job and each replay day run."""
    return evaluate_drift(settings, evaluate_outcomes(settings, as_of, reports_dir, with_plots), reports_dir, with_plots)


def report_folder(settings: Settings, as_of: datetime, reports_dir: Path | None, with_plots: bool = True) -> Path:
    folder = reports_dir or settings.reports_dir / as_of.strftime("%Y-%m-%d")
    if with_plots:
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def evaluate_outcomes(settings: Settings, as_of: datetime | None = None, reports_dir: Path | None = None,
                      with_plots: bool = True) -> Evaluation:
    """Logged predictions joined with their outcomes; live quality against each champion's backtest."""
    from itff_platform.monitoring.outcomes import realized_from_lake, write_quality_summary
    from itff_platform.monitoring.plots import live_equity_plot, live_reliability_plot
    from itff_platform.monitoring.prediction_log import read_prediction_log
    from itff_platform.monitoring.quality import live_quality

    as_of = as_of or datetime.now(timezone.utc)
    folder = report_folder(settings, as_of, reports_dir, with_plots)
    log = read_prediction_log(settings).filter(pl.col("logged_at") <= as_of)
    realized, pending = realized_from_lake(settings, log)
    asked = realized.height + pending
    # An outcome is known only once the bar `label_horizon` bars later has closed, as of this evaluation.
    horizon = timedelta(seconds=settings.interval_seconds * (settings.label_horizon + 1))
    realized = realized.filter(pl.col("bar_time") + horizon <= as_of)
    result = Evaluation(as_of=as_of, logged=log.height, pending=asked - realized.height, realized=realized)
    result.quality = live_quality(realized, settings.fees_bps)
    if result.quality.height:
        write_quality_summary(settings, result.quality)
    result.expectations = champion_expectations(settings)
    result.degradation = _degradation(settings, result.quality, result.expectations)
    for (symbol, target), rows in (realized.group_by(["symbol", "target"]) if realized.height and with_plots else []):
        if target != "forward_return" and rows["prob_up"].drop_nulls().len() >= 2:
            result.figures[f"reliability {symbol} {target}"] = live_reliability_plot(
                rows, f"{symbol} {target}: live reliability ({rows.height} outcomes)", folder / f"reliability-{symbol}-{target}.png")
        result.figures[f"equity {symbol} {target}"] = live_equity_plot(
            rows, settings.fees_bps, f"{symbol} {target}: served signals vs buy and hold, after fees",
            folder / f"equity-{symbol}-{target}.png", horizon=settings.label_horizon)
    return result


def evaluate_drift(settings: Settings, result: Evaluation, reports_dir: Path | None = None, with_plots: bool = True) -> Evaluation:
    """Feature and regime drift of each symbol, then a keep/retrain decision per model."""
    from itff_platform.monitoring.plots import drift_plot, regime_mix_plot

    folder = report_folder(settings, result.as_of, reports_dir, with_plots)
    _drift(settings, result, result.expectations)
    result.decisions = _decide(settings, result)
    for symbol, drift in (result.drift.items() if with_plots else []):
        result.figures[f"drift {symbol}"] = drift_plot(
            drift, f"{symbol}: feature drift (PSI), last {settings.drift_recent_days} days vs training",
            folder / f"drift-{symbol}.png", settings.drift_psi_warn, settings.drift_psi_error)
        shift = result.regime[symbol]
        result.figures[f"regimes {symbol}"] = regime_mix_plot(
            shift["reference_shares"], shift["recent_shares"], f"{symbol}: regime mix, training vs recent", folder / f"regimes-{symbol}.png")
    return result


def _degradation(settings: Settings, quality: pl.DataFrame, expectations: dict) -> list[dict]:
    from itff_platform.monitoring.quality import quality_degradation

    rows = []
    overall = {(r["symbol"], r["target"]): r for r in quality.filter(pl.col("scope") == "all").iter_rows(named=True)} if quality.height else {}
    for (symbol, target), expected in expectations.items():
        live = overall.get((symbol, target), {"n": 0})
        if target == "forward_return":  # a quantile model has no log loss: its MAPE is reported beside the backtest's, not graded
            rows.append({"symbol": symbol, "target": target, "champion": expected["version"], "live_mape": live.get("mape"),
                         "expected_mape": expected.get("mape"), "status": "not graded", "n": live["n"]})
            continue
        graded = quality_degradation(live, expected, settings)
        rows.append({"symbol": symbol, "target": target, "champion": expected["version"],
                     "expected_log_loss": expected.get("log_loss"), "live_log_loss": live.get("log_loss"),
                     "live_hit_rate": live.get("hit_rate"), "expected_hit_rate": expected.get("backtest_hit_rate_trades"),
                     "live_brier": live.get("brier"), "expected_brier": expected.get("brier"), **graded})
    return rows


def _drift(settings: Settings, result: Evaluation, expectations: dict) -> None:
    from itff_platform.features.silver import feature_columns
    from itff_platform.lake.delta import read_rows
    from itff_platform.lake.layers import LakeTables
    from itff_platform.monitoring.drift import feature_drift, regime_shift

    silver = LakeTables.under(settings).silver
    recent_start = result.as_of - timedelta(days=settings.drift_recent_days)
    for symbol in settings.symbols:
        trained = [e["trained_through"] for (s, _), e in expectations.items() if s == symbol and e.get("trained_through")]
        # The newest bar the champions learned from closes the training window; with no champion, the recent window does.
        reference_end = min(datetime.fromisoformat(max(trained)).replace(tzinfo=timezone.utc), recent_start) if trained else recent_start
        reference = read_rows(silver, settings.interval, symbol, reference_end - timedelta(days=settings.drift_reference_days), reference_end)
        recent = read_rows(silver, settings.interval, symbol, recent_start, result.as_of)
        if reference.is_empty() or recent.is_empty():
            continue
        result.drift[symbol] = feature_drift(reference, recent, feature_columns(settings), settings)
        result.regime[symbol] = regime_shift(reference["regime"], recent["regime"], settings)


def _decide(settings: Settings, result: Evaluation) -> pl.DataFrame:
    rows = []
    for symbol in settings.symbols:
        drift = result.drift.get(symbol)
        drifted = drift.filter(pl.col("status") == "error")["feature"].to_list() if drift is not None else []
        shift = result.regime.get(symbol, {})
        for target in settings.targets:
            if (symbol, target) not in result.expectations:
                continue  # no champion: nothing served, nothing to keep or retrain
            reasons = []
            if len(drifted) >= settings.drift_features_for_retrain:
                reasons.append(f"{len(drifted)} features drifted past the error threshold: {', '.join(drifted[:5])}")
            if shift.get("status") == "error":
                reasons.append(f"regime mix shifted: PSI {shift['psi']:.3f} >= {settings.regime_shift_error}")
            for d in result.degradation:
                if (d["symbol"], d["target"]) == (symbol, target) and d["status"] == "error":
                    reasons.append(f"live log loss {d['live_log_loss']:.4f} is {d['delta_log_loss']:+.4f} over the backtest's "
                                   f"{d['expected_log_loss']:.4f} on {d['n']} outcomes")
            rows.append({"decided_at": datetime.now(timezone.utc), "as_of": result.as_of, "symbol": symbol, "target": target,
                         "decision": "retrain" if reasons else "keep", "reasons": "; ".join(reasons) or "within thresholds"})
    return pl.DataFrame(rows, schema=DECISION_SCHEMA)


def decisions_path(settings: Settings) -> Path:
    return settings.monitoring_dir / "decisions"


def record_decisions(settings: Settings, decisions: pl.DataFrame) -> None:
    """Every decision, keep or retrain, appended to a Delta table: the history the UI and replay report from."""
    from deltalake import write_deltalake

    if decisions.height:
        write_deltalake(str(decisions_path(settings)), decisions.to_arrow(), mode="append")


def read_decisions(settings: Settings) -> pl.DataFrame:
    from deltalake import DeltaTable

    path = decisions_path(settings)
    return pl.read_delta(str(path)) if DeltaTable.is_deltatable(str(path)) else pl.DataFrame(schema=DECISION_SCHEMA)
