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
from itff_platform.defs.resources import ItffSettingsResource
from itff_platform.settings import Settings

SUMMARY_COLUMNS = {
    "classification": ["log_loss", "roc_auc", "brier", "ece", "ece_before_calibration", "backtest_profit_factor",
                       "backtest_trades", "backtest_max_drawdown", "threshold"],
    "regression": ["pinball_loss", "mae", "mape", "band_coverage"],
}


def training_partitions(settings: Settings) -> MultiPartitionsDefinition:
    return MultiPartitionsDefinition(
        {"symbol": StaticPartitionsDefinition(settings.symbols), "target": StaticPartitionsDefinition(settings.targets)}
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
        description="Walk-forward Optuna studies for every model family and the baselines; the best of each "
        "family is refit and registered as itff-{symbol}-{target}.",
    )
    def trained_models(context: AssetExecutionContext, itff: ItffSettingsResource) -> MaterializeResult:
        import polars as pl

        from itff_platform.training.train import train_symbol_target

        cfg = itff.settings()
        summaries, figures, links, by_fold, by_regime = [], {}, {}, [], []
        for symbol, target in map(symbol_and_target, context.partition_keys):
            task = "regression" if target == "forward_return" else "classification"
            for outcome in train_symbol_target(cfg, symbol, target, progress=context.log.info):
                summaries.append(
                    {"symbol": symbol, "target": target, "family": outcome.family, "version": outcome.model_version or "-",
                     **{k: round(outcome.metrics.get(k, float("nan")), 4) for k in SUMMARY_COLUMNS[task]},
                     "tradable": outcome.tradable if task == "classification" else None,
                     "trials_per_min": round(outcome.trials_per_minute, 1), "run_id": outcome.run_id}
                )
                study = {"symbol": symbol, "target": target, "family": outcome.family}
                if outcome.fold_table is not None and "profit_factor" in outcome.fold_table.columns:
                    by_fold.append(outcome.fold_table.select("fold", *TRADING).with_columns(**{k: pl.lit(v) for k, v in study.items()}))
                if outcome.regime_table is not None:
                    by_regime.append(outcome.regime_table.with_columns(**{k: pl.lit(v) for k, v in study.items()}))
                links[f"{symbol}/{target}/{outcome.family}"] = outcome.run_id
                if "reliability" in outcome.figures and not outcome.family.startswith("baseline"):
                    figures[f"{symbol} {target} {outcome.family}"] = outcome.figures["reliability"]
                elif "quantile_bands" in outcome.figures:
                    figures[f"{symbol} {target} {outcome.family}"] = outcome.figures["quantile_bands"]
        table = pl.DataFrame(summaries)
        metadata = {
            "studies": markdown_table(table.drop("run_id")),
            # The deployed threshold rule replayed walk-forward, after fees: per fold it traded, and per regime.
            "trading_by_fold": markdown_table(trading_table(by_fold, "fold"), max_rows=300),
            "trading_by_regime": markdown_table(trading_table(by_regime, "regime"), max_rows=300),
            "summary": MetadataValue.json(summaries),
            "mlflow_tracking_uri": cfg.tracking_uri,
            "mlflow_runs": MetadataValue.md(
                "\n".join(f"- {name}: [{rid}]({cfg.mlflow_ui_url}/#/experiments/runs/{rid})" for name, rid in links.items())
            ),
        }
        classifiers = table.filter(~pl.col("family").str.starts_with("baseline")).filter(pl.col("target") != "forward_return")
        if classifiers.height and "log_loss" in classifiers.columns:
            best = classifiers.sort("log_loss").row(0, named=True)
            metadata.update({"best_family": best["family"], "best_log_loss": best["log_loss"], "best_roc_auc": best["roc_auc"]})
            best_plot = figures.get(f"{best['symbol']} {best['target']} {best['family']}")
            if best_plot is not None:
                metadata["reliability_of_best"] = png_markdown(best_plot)
        for name, path in list(figures.items())[:12]:
            metadata[f"plot: {name}"] = MetadataValue.path(str(path))
        return MaterializeResult(metadata=metadata)

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


def promotion_assets(settings: Settings) -> list:
    @asset(
        partitions_def=training_partitions(settings),
        backfill_policy=BackfillPolicy.single_run(),
        deps=["trained_models"],
        group_name="training",
        kinds={"mlflow"},
        description="Serve decision: the challenger becomes champion when its holdout loss beats the better baseline "
        "(and the champion) with 95 % confidence (Diebold-Mariano); moves the MLflow alias 'champion' then, and records "
        "the decision, p-values, tradability and reasons either way.",
    )
    def champion_models(context: AssetExecutionContext, itff: ItffSettingsResource) -> MaterializeResult:
        from itff_platform.training.promotion import promote_champion

        cfg = itff.settings()
        decisions = []
        for symbol, target in map(symbol_and_target, context.partition_keys):
            decision = promote_champion(cfg, symbol, target)
            verdict = "PROMOTED" if decision.promoted else "kept"
            context.log.info(f"{decision.name}: {verdict} v{decision.challenger} vs {decision.compared_with}: {'; '.join(decision.reasons)}")
            decisions.append(
                {"model": decision.name, "decision": "promoted" if decision.promoted else "rejected",
                 "challenger": decision.challenger, "compared_with": decision.compared_with,
                 "champion_before": decision.champion_before, "champion_after": decision.champion_after,
                 "p_value_vs_baseline": round(decision.figures["p_value_vs_baseline"], 4) if "p_value_vs_baseline" in decision.figures else None,
                 "tradable": decision.tradable, "reasons": decision.reasons}
            )
        import polars as pl

        return MaterializeResult(
            metadata={
                "decisions": markdown_table(pl.DataFrame(decisions).drop("reasons")),
                "reasons": MetadataValue.md("\n".join(f"- **{d['model']}** ({d['decision']}):\n" + "\n".join(f"  - {r}" for r in d["reasons"])
                                                      for d in decisions)),
                "summary": MetadataValue.json(decisions),
                "promoted": sum(d["decision"] == "promoted" for d in decisions),
            }
        )

    return [champion_models]
