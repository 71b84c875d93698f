"""trained_models: one partition per symbol x target; every family's Optuna study, tracked in MLflow."""

import json

from dagster import (
    AssetDep,
    AssetExecutionContext,
    BackfillPolicy,
    DimensionPartitionMapping,
    IdentityPartitionMapping,
    MaterializeResult,
    MetadataValue,
    MultiPartitionKey,
    MultiPartitionMapping,
    MultiPartitionsDefinition,
    StaticPartitionsDefinition,
    asset,
)

from itff_platform.defs.checks import markdown_table
from itff_platform.defs.metadata import OWNERS
from itff_platform.defs.resources import ItffSettingsResource
from itff_platform.models import CLASSIFICATION_BASELINES, REGRESSION_BASELINES
from itff_platform.rules import task_of
from itff_platform.settings import Settings

SUMMARY_COLUMNS = {
    "classification": ["log_loss", "roc_auc", "brier", "ece", "ece_before_calibration", "backtest_profit_factor",
                       "backtest_trades", "backtest_max_drawdown", "threshold"],
    "regression": ["pinball_loss", "mae", "mape", "band_coverage"],
}


def training_partitions(settings: Settings) -> MultiPartitionsDefinition:
    return MultiPartitionsDefinition(
        {"symbol": StaticPartitionsDefinition(settings.symbols), "target": StaticPartitionsDefinition(settings.training.targets)}
    )


def symbol_and_target(key) -> tuple[str, str]:
    """A symbol x target partition key: a MultiPartitionKey, or its string form 'SYMBOL|target'."""
    dims = key.keys_by_dimension if isinstance(key, MultiPartitionKey) else dict(zip(("symbol", "target"), key.split("|")))
    return dims["symbol"], dims["target"]


TRADING = ["threshold", "trades", "profit_factor", "max_drawdown", "sharpe", "hit_rate_trades"]


def trading_table(parts: list, by: str):
    """One row per study and fold (or regime), rounded for reading."""
    import polars as pl

    if not parts:
        return pl.DataFrame({"symbol": []})
    frame = pl.concat(parts, how="diagonal_relaxed")
    columns = ["symbol", "target", "family", by, *[c for c in TRADING if c in frame.columns]]
    return frame.select(columns).with_columns(pl.col(pl.Float64).round(3))


def png_markdown(path) -> MetadataValue:
    from itff_platform.monitoring.plots import embed_png

    return MetadataValue.md(embed_png(path))


def mlflow_run_url(ui_url: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI's page for a run; its router needs the experiment id, /#/experiments/runs/<id> is a 404."""
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


# The figures a study may produce, in reading order: the evaluation names them, the metadata labels them.
STUDY_FIGURES = ("reliability", "threshold_sweep", "equity", "quantile_bands")


def study_metadata(cfg: Settings, symbol: str, target: str, outcomes: list) -> dict:
    """One symbol x target partition's metadata: its studies, trading figures, every study's plots and MLflow links."""
    import polars as pl

    from itff_platform.training.study import experiment_id

    task = task_of(target)
    summaries, by_fold, by_regime, plots, links, reused = [], [], [], {}, [], []
    experiment = experiment_id(cfg, symbol, target)
    for outcome in outcomes:
        summaries.append(
            {"symbol": symbol, "target": target, "family": outcome.family, "version": outcome.model_version or "-",
             **{k: round(outcome.metrics.get(k, float("nan")), 4) for k in SUMMARY_COLUMNS[task]},
             "tradable": outcome.tradable if task == "classification" else None,
             "trials_per_min": round(outcome.trials_per_minute, 1), "run_id": outcome.run_id, "reused": outcome.reused}
        )
        study = {"symbol": symbol, "target": target, "family": outcome.family}
        if outcome.fold_table is not None and "profit_factor" in outcome.fold_table.columns:
            by_fold.append(outcome.fold_table.select("fold", *TRADING).with_columns(**{k: pl.lit(v) for k, v in study.items()}))
        if outcome.regime_table is not None:
            by_regime.append(outcome.regime_table.with_columns(**{k: pl.lit(v) for k, v in study.items()}))
        link = f"[{outcome.run_id}]({mlflow_run_url(cfg.tracking.mlflow_ui_url, experiment, outcome.run_id)})"
        links.append(f"- {outcome.family}: {link}")
        if outcome.reused:
            reused.append(f"- {outcome.family}: unchanged since run {link} (same data, settings and code)")
        for name in STUDY_FIGURES:
            if name in outcome.figures:
                plots[f"plot: {outcome.family} {name}"] = png_markdown(outcome.figures[name])
    table = pl.DataFrame(summaries)
    metadata = {
        "studies": markdown_table(table.drop("run_id")),
        # The deployed threshold rule replayed walk-forward, after fees: per fold it traded, and per regime.
        "trading_by_fold": markdown_table(trading_table(by_fold, "fold"), max_rows=300),
        "trading_by_regime": markdown_table(trading_table(by_regime, "regime"), max_rows=300),
        "summary": MetadataValue.json(summaries),
        "mlflow_experiment": MetadataValue.url(f"{cfg.tracking.mlflow_ui_url.rstrip('/')}/#/experiments/{experiment}"),
        "mlflow_runs": MetadataValue.md("\n".join(links)),
        "studies_reused": len(reused),
    }
    if reused:  # what this partition did not retrain, and the run each study's figures come from
        metadata["unchanged_since"] = MetadataValue.md("\n".join(reused))
    classifiers = table.filter(~pl.col("family").is_in([*CLASSIFICATION_BASELINES, *REGRESSION_BASELINES]))
    if task == "classification" and classifiers.height:
        best = classifiers.sort("log_loss").row(0, named=True)
        metadata.update({"best_family": best["family"], "best_log_loss": best["log_loss"], "best_roc_auc": best["roc_auc"]})
        best_plot = f"plot: {best['family']} reliability"
        if best_plot in plots:
            metadata["reliability_of_best"] = plots[best_plot]
    return metadata | plots


def training_assets(settings: Settings) -> list:
    # Every month of the symbol's silver feeds each of its targets.
    silver_to_training = MultiPartitionMapping(
        {"symbol": DimensionPartitionMapping("symbol", IdentityPartitionMapping())}
    )

    @asset(
        partitions_def=training_partitions(settings),
        backfill_policy=BackfillPolicy.single_run(),
        deps=[AssetDep("silver_features", partition_mapping=silver_to_training)],
        group_name="training",
        kinds={"mlflow", "optuna", "sklearn", "pytorch"},
        owners=OWNERS,
        description="Walk-forward Optuna studies for every model family and the baselines; the best of each "
        "family is refit and registered as itff-{symbol}-{target}.",
    )
    def trained_models(context: AssetExecutionContext, itff: ItffSettingsResource) -> MaterializeResult:
        from itff_platform.settings import redact_uri
        from itff_platform.training.train import train_symbol_target

        cfg = itff.settings()
        for key in context.partition_keys:
            symbol, target = symbol_and_target(key)
            outcomes = train_symbol_target(cfg, symbol, target, progress=context.log.info)
            # A single-run backfill trains many partitions; each partition's page must show its own studies, not
            # the whole run's, so the figures are attached per partition key.
            context.add_asset_metadata(study_metadata(cfg, symbol, target, outcomes), partition_key=key)
        return MaterializeResult(metadata={"mlflow_tracking_uri": redact_uri(cfg.tracking_uri)})  # a database URI may hold a password

    return [trained_models]


def summary_rows(result) -> list[dict]:
    """The per-family rows a training run reported, for the CLI's table."""
    rows = []
    for event in result.get_asset_materialization_events():
        if event.asset_key.to_user_string() == "trained_models":
            value = event.materialization.metadata.get("summary")
            if value is not None:
                rows.extend(value.value if isinstance(value.value, list) else json.loads(value.value))
    unique = {(r["symbol"], r["target"], r["family"], r["run_id"]): r for r in rows}
    return list(unique.values())


def decision_metadata(decision) -> dict:
    """One champion_models partition's metadata: its promotion decision and the reasons for it."""
    import polars as pl

    verdict = "promoted" if decision.promoted else "kept" if decision.unchanged else "rejected"
    row = {"model": decision.name, "decision": verdict,
           "challenger": decision.challenger, "compared_with": decision.compared_with,
           "champion_before": decision.champion_before, "champion_after": decision.champion_after,
           "p_value_vs_baseline": round(decision.figures["p_value_vs_baseline"], 4) if "p_value_vs_baseline" in decision.figures else None,
           "tradable": decision.tradable, "reasons": decision.reasons}
    return {
        "decisions": markdown_table(pl.DataFrame([row]).drop("reasons")),
        "reasons": MetadataValue.md("\n".join(f"- {r}" for r in decision.reasons) or "none"),
        "summary": MetadataValue.json([row]),
        "promoted": int(decision.promoted),
    }


def promotion_assets(settings: Settings) -> list:
    @asset(
        partitions_def=training_partitions(settings),
        backfill_policy=BackfillPolicy.single_run(),
        deps=["trained_models"],
        group_name="training",
        kinds={"mlflow"},
        owners=OWNERS,
        description="Serve decision: the challenger becomes champion when its holdout loss beats the better baseline "
        "(and the champion) with 95 % confidence (Diebold-Mariano); moves the MLflow alias 'champion' then, and records "
        "the decision, p-values, tradability and reasons either way.",
    )
    def champion_models(context: AssetExecutionContext, itff: ItffSettingsResource) -> MaterializeResult:
        from itff_platform.training.promotion import promote_champion

        cfg = itff.settings()
        promoted = 0
        for key in context.partition_keys:
            symbol, target = symbol_and_target(key)
            decision = promote_champion(cfg, symbol, target)
            verdict = "PROMOTED" if decision.promoted else "kept"
            judged = f"v{decision.challenger} vs {decision.compared_with}" if decision.challenger else "no new version"
            context.log.info(f"{decision.name}: {verdict} {judged}: {'; '.join(decision.reasons)}")
            promoted += decision.promoted
            # Each partition shows its own decision, not every decision of a single-run backfill.
            context.add_asset_metadata(decision_metadata(decision), partition_key=key)
        return MaterializeResult(metadata={"promoted_in_run": promoted})  # the run's count, on each of its partitions

    return [champion_models]
