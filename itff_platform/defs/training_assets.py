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
    RetryPolicy,
    StaticPartitionsDefinition,
    asset,
)

from itff_platform import markdown
from itff_platform.defs.checks import markdown_table
from itff_platform.defs.metadata import OWNERS
from itff_platform.defs.resources import ItffSettingsResource
from itff_platform.settings import Settings

CLUSTER_RETRY = RetryPolicy(max_retries=2, delay=15)


def training_partitions(settings: Settings) -> MultiPartitionsDefinition:
    return MultiPartitionsDefinition(
        {
            "symbol": StaticPartitionsDefinition(settings.symbols),
            "target": StaticPartitionsDefinition(settings.training.targets),
        }
    )


def symbol_and_target(key) -> tuple[str, str]:
    """A symbol x target partition key: a MultiPartitionKey, or its string form 'SYMBOL|target'."""
    dims = (
        key.keys_by_dimension
        if isinstance(key, MultiPartitionKey)
        else dict(zip(("symbol", "target"), key.split("|"), strict=True))
    )
    return dims["symbol"], dims["target"]


def parallel_runs(instance) -> int:
    """How many runs this Dagster instance may run at once (its run queue's max_concurrent_runs; 1 when it sets
    none): a training run shares the cores with that many, so its trials take fewer threads (training.threads)."""
    queue = instance.get_concurrency_config().run_queue_config
    limit = queue.max_concurrent_runs if queue is not None else None
    return limit if isinstance(limit, int) and limit > 0 else 1


def study_metadata(cfg: Settings, symbol: str, target: str, outcomes: list) -> dict:
    """One symbol x target partition's metadata, from reporting.study_report: its studies, trading figures, every
    study's plots and MLflow links."""
    from itff_platform.monitoring.plots import embed_png
    from itff_platform.reporting import study_report

    report = study_report(cfg, symbol, target, outcomes)
    plots = {label: MetadataValue.md(embed_png(path)) for label, path in report.figures.items()}
    metadata = {
        "studies": MetadataValue.md(report.studies),
        # The deployed threshold rule replayed walk-forward, after fees: per fold it traded, and per regime.
        "trading_by_fold": MetadataValue.md(report.trading_by_fold),
        "trading_by_regime": MetadataValue.md(report.trading_by_regime),
        "summary": MetadataValue.json(report.summary),
        "mlflow_experiment": MetadataValue.url(report.experiment_url),
        "mlflow_runs": MetadataValue.md(report.runs),
        "studies_reused": report.studies_reused,
    }
    if report.reused:  # what this partition did not retrain, and the run each study's figures come from
        metadata["unchanged_since"] = MetadataValue.md(report.reused)
    if report.best is not None:
        best = report.best
        metadata.update(
            {"best_family": best["family"], "best_log_loss": best["log_loss"], "best_roc_auc": best["roc_auc"]}
        )
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
        # On the cluster a step can fail for its worker's sake (a lost connection to Postgres or the MLflow server):
        # it is tried again, the retry shown in the run's timeline. Embedded, a failure is the code's: no retry.
        retry_policy=CLUSTER_RETRY if settings.clustered else None,
    )
    def trained_models(context: AssetExecutionContext, itff: ItffSettingsResource) -> MaterializeResult:
        from itff_platform.settings import redact_uri
        from itff_platform.training.train import train_symbol_target

        cfg = itff.settings()
        parallel = parallel_runs(context.instance)
        for key in context.partition_keys:
            symbol, target = symbol_and_target(key)
            outcomes = train_symbol_target(cfg, symbol, target, progress=context.log.info, parallel_runs=parallel)
            # A single-run backfill trains many partitions; each partition's page must show its own studies, not
            # the whole run's, so the figures are attached per partition key.
            context.add_asset_metadata(study_metadata(cfg, symbol, target, outcomes), partition_key=key)
        return MaterializeResult(
            metadata={"mlflow_tracking_uri": redact_uri(cfg.tracking_uri)}
        )  # a database URI may hold a password

    return [trained_models]


def summary_rows(result) -> list[dict]:
    """The per-family rows a training run reported, for the CLI's table."""
    rows: list[dict] = []
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
    row = {
        "model": decision.name,
        "decision": verdict,
        "challenger": decision.challenger,
        "compared_with": decision.compared_with,
        "champion_before": decision.champion_before,
        "champion_after": decision.champion_after,
        "p_value_vs_baseline": round(decision.figures["p_value_vs_baseline"], 4)
        if "p_value_vs_baseline" in decision.figures
        else None,
        "tradable": decision.tradable,
        "reasons": decision.reasons,
    }
    return {
        "decisions": markdown_table(pl.DataFrame([row]).drop("reasons")),
        "reasons": MetadataValue.md(markdown.bullets(decision.reasons) or "none"),
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
