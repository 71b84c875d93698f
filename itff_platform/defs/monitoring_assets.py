"""prediction_outcomes -> drift_monitor: the feedback loop, thin over monitoring.evaluation."""

from datetime import datetime

import polars as pl
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    MaterializeResult,
    MetadataValue,
    Output,
    asset,
)

from itff_platform.defs.checks import markdown_table
from itff_platform.defs.metadata import OWNERS
from itff_platform.defs.resources import ItffSettingsResource
from itff_platform.rules import as_utc

DRIFT_CHECKS = {
    "feature_drift": "PSI and KS of each feature, recent days vs the training window, within thresholds calibrated "
    "to a false-alarm rate on the reference period.",
    "regime_shift": "The recent mix of market regimes is close to the training window's (PSI within its threshold).",
    "live_quality": "Each champion's live log loss (or MAPE), precision and recall stay near its backtest's; passes "
    "with nothing to judge until enough outcomes are realized.",
}
SEVERITY = {"warn": AssetCheckSeverity.WARN, "error": AssetCheckSeverity.ERROR}


def _live_status(logged: int, realized: int, pending: int) -> str:
    if not logged:
        return "no predictions logged yet: serve the champions (make serve) and send /predict; outcomes follow the label horizon"
    if not realized:
        return f"{logged} predictions logged, none realized yet: {pending} waiting for their label horizon"
    return f"{logged} predictions logged, {realized} realized, {pending} waiting for their label horizon"


def _as_of(itff: ItffSettingsResource):
    if not itff.evaluation_as_of:
        return None
    return as_utc(datetime.fromisoformat(itff.evaluation_as_of))  # the log's times are UTC


def _plots(figures: dict, prefix: str) -> dict:
    from itff_platform.monitoring.plots import embed_png

    return {
        f"plot: {name}": MetadataValue.md(embed_png(path, name))
        for name, path in figures.items()
        if name.startswith(prefix)
    }


def _rounded(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.with_columns(pl.selectors.float().round(4))


def monitoring_assets() -> list:
    @asset(
        deps=["silver_features"],
        group_name="monitoring",
        kinds={"delta", "mlflow"},
        owners=OWNERS,
        description="Logged predictions (candle, lake and dated feature-row requests) joined with their realized outcomes "
        "once the label horizon has passed: per model version over the last live_quality_window_days, overall and per "
        "regime, hit rate, profit factor and drawdown after fees, latency p95, Brier, log loss, calibration and MAPE, "
        "beside the same version's backtest. Needs live traffic: until the service has logged predictions (make serve, "
        "then /predict), it materializes with status 'no predictions logged yet'.",
    )
    def prediction_outcomes(context: AssetExecutionContext, itff: ItffSettingsResource) -> Output:
        from itff_platform.monitoring.evaluation import evaluate_outcomes
        from itff_platform.monitoring.prediction_log import compact_prediction_log

        cfg = itff.settings()
        compaction = compact_prediction_log(cfg)
        context.log.info(
            f"prediction log compacted: {compaction['files_removed']} files into {compaction['files_added']}"
        )
        result = evaluate_outcomes(cfg, _as_of(itff))
        context.log.info(
            f"{result.logged} predictions logged, {result.realized.height} realized, {result.pending} waiting for their horizon"
        )
        metadata = {
            "status": _live_status(result.logged, result.realized.height, result.pending),
            "as_of": result.as_of.isoformat(),
            "live_window_days": cfg.monitoring.live_quality_window_days,
            "predictions_logged": result.logged,
            "outcomes_realized": result.realized.height,
            "outcomes_pending": result.pending,
            "live_quality": markdown_table(_rounded(result.quality)),
            "live_vs_backtest": markdown_table(_rounded(pl.DataFrame(result.degradation)))
            if result.degradation
            else "no champion yet",
            "precision_recall_vs_backtest": markdown_table(_rounded(pl.DataFrame(result.precision_recall)))
            if result.precision_recall
            else "no classification champion yet",
            "log_files_compacted": compaction["files_removed"],
            "reports": MetadataValue.path(str(cfg.reports_dir / result.as_of.strftime("%Y-%m-%d"))),
            **_plots(result.figures, "reliability"),
            **_plots(result.figures, "equity"),
        }
        return Output(result, metadata=metadata)

    @asset(
        group_name="monitoring",
        kinds={"delta"},
        owners=OWNERS,
        check_specs=[
            AssetCheckSpec(name, asset="drift_monitor", description=text) for name, text in DRIFT_CHECKS.items()
        ],
        description="PSI and KS of every feature (training window vs recent data), the shift in the regime mix, and "
        "live quality against the backtest; a keep/retrain decision per model, recorded in the decisions table. Drift "
        "needs no traffic; live quality waits for logged predictions and their outcomes.",
    )
    def drift_monitor(
        context: AssetExecutionContext, itff: ItffSettingsResource, prediction_outcomes
    ) -> MaterializeResult:
        from itff_platform.monitoring.evaluation import evaluate_drift, record_decisions
        from itff_platform.monitoring.outcomes import write_drift_summary

        cfg = itff.settings()
        result = evaluate_drift(cfg, prediction_outcomes)
        record_decisions(cfg, result.decisions)
        retrain = [f"{symbol}|{target}" for symbol, target in result.retrain()]
        context.log.info(f"retrain requested for {retrain or 'nothing'}")
        drift = (
            pl.concat([d.with_columns(symbol=pl.lit(s)) for s, d in result.drift.items()])
            if result.drift
            else pl.DataFrame()
        )
        write_drift_summary(cfg, drift)  # for the service's itff_feature_drift gauge (Grafana)
        return MaterializeResult(
            metadata={
                "as_of": result.as_of.isoformat(),
                "retrain": MetadataValue.json(retrain),
                "decisions": markdown_table(result.decisions.select("symbol", "target", "decision", "reasons")),
                "feature_drift": markdown_table(
                    _rounded(drift.filter(pl.col("status") != "ok")) if drift.height else drift
                ),
                "regime_shift": MetadataValue.json({s: {k: v for k, v in r.items()} for s, r in result.regime.items()}),
                # With no champion yet there is no training window to compare with: "none", not an error.
                "drift_thresholds": markdown_table(
                    _rounded(drift.select("symbol", "feature", "psi_threshold", "ks_threshold", "calibration_windows"))
                    if drift.height
                    else drift
                ),
                "false_alarm_rate": cfg.monitoring.drift_false_alarm_rate,
                "cooldown_days": cfg.monitoring.drift_cooldown_days,
                **_plots(result.figures, "drift"),
                **_plots(result.figures, "regimes"),
            },
            check_results=_check_results(cfg, result, drift),
        )

    return [prediction_outcomes, drift_monitor]


def _check_results(cfg, result, drift: pl.DataFrame) -> list[AssetCheckResult]:
    from itff_platform.monitoring.drift import worst

    feature_status = worst(*drift["status"].to_list()) if drift.height else "ok"
    regime_status = worst(*(r["status"] for r in result.regime.values())) if result.regime else "ok"
    graded = [d for d in [*result.degradation, *result.precision_recall] if d["status"] in ("ok", "warn", "error")]
    quality_status = worst(*(d["status"] for d in graded)) if graded else "ok"
    return [  # one result per DRIFT_CHECKS entry, in any order
        _graded(
            "feature_drift",
            feature_status,
            f"PSI and KS past each feature's threshold, calibrated to a "
            f"{cfg.monitoring.drift_false_alarm_rate:g} false-alarm rate on the reference period and floored at PSI warn "
            f"{cfg.monitoring.drift_psi_warn} / error {cfg.monitoring.drift_psi_error}, KS warn {cfg.monitoring.drift_ks_warn} / error {cfg.monitoring.drift_ks_error}",
            {"drifted_features": int(drift.filter(pl.col("status") != "ok").height) if drift.height else 0},
        ),
        _graded(
            "regime_shift",
            regime_status,
            f"PSI of the regime mix past its calibrated threshold (floors warn "
            f"{cfg.monitoring.regime_shift_warn} / error {cfg.monitoring.regime_shift_error})",
            {s: round(r["psi"], 4) for s, r in result.regime.items()}
            | {f"{s} threshold": round(r["threshold"], 4) for s, r in result.regime.items()},
        ),
        _graded(
            "live_quality",
            quality_status,
            f"live log loss over the backtest's: warn +{cfg.monitoring.quality_log_loss_warn} / error "
            f"+{cfg.monitoring.quality_log_loss_error}; forward_return MAPE above {cfg.monitoring.drift_mape_error:.0%}; precision or recall of the "
            f"last {cfg.monitoring.drift_precision_recall_days} days more than {cfg.monitoring.drift_precision_recall_max:g} from the backtest's; "
            f"judged from {cfg.monitoring.min_live_outcomes} outcomes",
            {
                "judgements": len(graded),
                "models_waiting_for_outcomes": sum(d["status"] == "insufficient" for d in result.degradation),
            },
        ),
    ]


def _graded(name: str, status: str, description: str, metadata: dict) -> AssetCheckResult:
    return AssetCheckResult(
        check_name=name,
        passed=status == "ok",
        severity=SEVERITY.get(status, AssetCheckSeverity.WARN),
        description=description,
        metadata={"status": status, **metadata},
    )
