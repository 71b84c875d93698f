"""Reuse a study's earlier run when nothing it depends on has changed, instead of training and registering again.

A study's fingerprint covers the rows it trains on (features, labels, times, regimes, prices: the arrays themselves,
so another symbol's new data or a label the target does not use leaves it alone), its walk-forward folds, every
setting that can change what it trains or reports (derived from the Settings model: all fields but those listed in
SETTINGS_IGNORED, by flat name), its family and trial budget, and the code: the training/ and models/ sources and the versions of
the libraries that fit the models. The parent run of every study carries it as the tag `study_fingerprint`; a later
study with the same fingerprint finds that run and returns its outcome, read back from MLflow (metrics, tags,
tables, figures and registered version), so nothing is trained and no version is registered twice."""

from __future__ import annotations

import ast
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from itff_platform.fingerprints import SHARED_MODULES, code_digest, digest
from itff_platform.lake.incremental import SILVER_SETTINGS
from itff_platform.models import is_baseline
from itff_platform.settings import Settings
from itff_platform.training.dataset import TrainingData
from itff_platform.training.splits import Fold
from itff_platform.training.study import (
    EXACT_METRICS_TAG,
    FINGERPRINT_TAG,
    StudyOutcome,
    experiment_id,
    figure_path,
    study_trials,
)
from itff_platform.training.timing import phases_of
from itff_platform.training.tracking import quiet_mlflow
from mlflow import MlflowClient

if TYPE_CHECKING:
    from mlflow.entities import Run

LIBRARIES = ("numpy", "scipy", "scikit-learn", "torch", "optuna")

# Settings that cannot change what a study trains or reports: where things live, what is ingested and how silver
# is computed (the rows themselves are in the fingerprint, so a label setting retrains only the targets whose labels
# it changed), which other symbols, targets and families exist, the trial budget (the study's own count is in the
# fingerprint), promotion's test, serving, monitoring, automation and display. A setting not named here is part of
# every study's fingerprint, so a new one retrains rather than reuses until it is listed.
SILVER_ONLY = set(SILVER_SETTINGS) - {"interval", "label_horizon"}  # these two training reads itself
SETTINGS_IGNORED = frozenset(
    SILVER_ONLY
    | {
        "home",
        "lake_dir",
        "mlflow_dir",
        "drop_dir",
        "reports_dir",
        "monitoring_dir",
        "serve_state_dir",
        "mlflow_tracking_uri",
        "mlflow_ui_url",
        "optuna_storage",
        "study_heartbeat_s",
        "progress_bar",
        "source",
        "symbols",
        "start_date",
        "end_date",
        "sample_end_date",
        "binance_base_url",
        "binance_archive_url",
        "binance_max_retries",
        "http_timeout_s",
        "gap_tolerance_bars",
        "continuity_atr_multiple",
        "lake_vacuum_retention_hours",
        "lake_maintenance_cron",
        "targets",
        "families",
        "regression_families",
        "trials",
        "torch_trials",
        "promotion_alpha",
        "api_tokens",
        "admin_token",
        "rate_limit_per_minute",
        "rate_limit_burst",
        "max_request_bytes",
        "tradingview_secret",
        "serve_workers",
        "serve_access_log",
        "batch_max_size",
        "reload_interval_s",
        "model_max_age_days",
        "live_quality_window_days",
        "tradingview_window_s",
        "tradingview_stale",
        "tradingview_max_close_deviation",
        "auth_failure_burst",
        "auth_failures_per_minute",
        "prediction_log_write_ahead",
        "service_url",
        "automation_on",
        "daily_run_utc",
        "daily_trials",
        "daily_torch_trials",
        "weekly_evaluation_cron",
        "prediction_log_flush_rows",
        "prediction_log_flush_s",
        "drift_recent_days",
        "drift_reference_days",
        "drift_psi_warn",
        "drift_psi_error",
        "drift_ks_warn",
        "drift_ks_error",
        "drift_features_for_retrain",
        "regime_shift_warn",
        "regime_shift_error",
        "quality_log_loss_warn",
        "quality_log_loss_error",
        "min_live_outcomes",
        "drift_false_alarm_rate",
        "drift_warn_false_alarm_rate",
        "drift_calibration_step_days",
        "drift_cooldown_days",
        "drift_mape_error",
        "drift_precision_recall_max",
        "drift_precision_recall_days",
        "drift_precision_recall_alpha",
        # The paper desk's gates and account: read when an order comes, never by a study.
        "confidence_threshold",
        "max_drawdown_pct",
        "per_symbol_usd_cap",
        "target_ann_vol",
        "slippage_bps",
        "paper_cash",
        "trading_mode",
        "accept_request_price",
        "ledger_dir",
        "autopilot_order_usd",
        # Where the stores and workers run: the same study gives the same result on one machine or a cluster.
        "profile",
        "postgres_url",
        "redis_url",
        "mlflow_server_url",
        "dagster_port",
        "workers",
        "cluster_dir",
    }
)


def data_digest(data: TrainingData) -> str:
    """The rows a symbol x target's studies train on, as arrays: computed once, shared by its families."""
    return digest(
        data.symbol,
        data.target,
        data.features,
        data.x,
        data.y,
        data.timestamps,
        data.regimes,
        data.forward_return,
        data.close,
    )


def study_fingerprint(data_fingerprint: str, folds: list[Fold], family: str, settings: Settings) -> str:
    chosen = settings.flat_dump(mode="json", exclude=SETTINGS_IGNORED)
    fold_rows = [(fold.number, fold.train, fold.test) for fold in folds]
    return digest(
        "study",
        data_fingerprint,
        *(part for row in fold_rows for part in row),
        family,
        study_trials(family, settings),
        chosen,
        code_digest("training", "models", "contracts", *SHARED_MODULES, libraries=LIBRARIES),
    )


def earlier_outcome(settings: Settings, data: TrainingData, family: str, fingerprint: str) -> StudyOutcome | None:
    """The outcome of the newest finished study run with this fingerprint whose registered version (if it registered
    one) is still in the registry; None when there is none and the study must run."""
    quiet_mlflow()
    client = MlflowClient(settings.tracking_uri)
    experiment = experiment_id(settings, data.symbol, data.target)
    runs = client.search_runs(
        [experiment],
        f"tags.{FINGERPRINT_TAG} = '{fingerprint}' AND attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
        max_results=10,
    )
    for run in runs:
        registers = not (is_baseline(family) or "not_registered" in run.data.tags)
        versions = client.search_model_versions(f"run_id = '{run.info.run_id}'") if registers else []
        if registers and not versions:
            continue  # its version was deleted from the registry: train again rather than serve nothing
        return _outcome_of(client, run, family, str(versions[0].version) if versions else None, data, settings)
    return None


def _outcome_of(
    client: MlflowClient, run: Run, family: str, version: str | None, data: TrainingData, settings: Settings
) -> StudyOutcome:
    """A StudyOutcome as the run recorded it: the same figures the study reported when it ran."""
    tags, run_id = run.data.tags, run.info.run_id
    metrics = {**run.data.metrics, **json.loads(tags.get(EXACT_METRICS_TAG, "{}"))}
    prefix = f"{family}."
    params = {
        k.removeprefix(prefix): _literal(v)
        for k, v in run.data.params.items()
        if k.startswith(prefix) or k == "class_weight"
    }
    with tempfile.TemporaryDirectory() as scratch:
        root = {Path(a.path).name for a in client.list_artifacts(run_id) if not a.is_dir}
        evaluation = {Path(a.path).name for a in client.list_artifacts(run_id, "evaluation")}
        tables = {
            name: pl.read_csv(client.download_artifacts(run_id, f"evaluation/{name}.csv", scratch))
            for name in ("folds", "regimes")
            if f"{name}.csv" in evaluation
        }
        figures = {}
        # The run's own figures, not whatever a later study of this family left under the same name.
        for name in sorted(root):
            if name.endswith(".png"):
                figures[name.removesuffix(".png")] = target = figure_path(
                    settings, data, family, name.removesuffix(".png")
                )
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(Path(client.download_artifacts(run_id, name, scratch)).read_bytes())
    return StudyOutcome(
        family,
        run_id,
        metrics,
        params,
        version,
        int(metrics.get("trials_completed", 0)),
        int(metrics.get("trials_pruned", 0)),
        metrics.get("study_seconds", 0.0),
        figures,
        tags.get("tradable") == "true",
        tags.get("tradable_reason", ""),
        tables.get("folds"),
        tables.get("regimes"),
        reused=True,
        phases=phases_of(metrics),
    )


def _literal(text: str) -> Any:
    """An MLflow param back to the number or word it was logged as."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
