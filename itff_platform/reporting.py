"""Summaries for people: the console's after a run, and each training partition's studies for the Dagster UI."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from itff_platform import markdown
from itff_platform.lake.delta import read_rows
from itff_platform.lake.layers import LakeTables
from itff_platform.rules import registered_name, task_of
from itff_platform.settings import Settings


def layer_counts(settings: Settings) -> pl.DataFrame:
    """Rows per symbol in each layer, read back from the Delta tables themselves."""
    tables = LakeTables.under(settings)
    counts = []
    for layer, path in vars(tables).items():
        try:
            frame = read_rows(path, settings.interval)
        except FileNotFoundError:
            continue
        counts.append(frame.group_by("symbol").len().with_columns(pl.lit(layer).alias("layer")))
    if not counts:
        return pl.DataFrame(schema={"symbol": pl.String})
    return pl.concat(counts).pivot(on="layer", index="symbol", values="len").fill_null(0).sort("symbol")


QUARANTINE_ROWS_SHOWN = 20


def check_detail(name: str, meta: dict) -> str:
    """One line on what a failed or warning lake check found, and where to look."""
    if name == "no_unexpected_gaps":
        return f"  ({meta['unexpected_gaps']} of {meta['gap_count']} gaps outside the exchange outages on record: see the check in the UI)"
    if name == "no_rejected_files":
        return f"  ({meta['rejected_files']} file(s) set aside into the drop folder's rejected/: {', '.join(meta['reasons'])})"
    if name == "no_rows_out_of_range":
        return f"  ({meta['future_rows']} row(s) stamped in the future, kept in quarantine as out_of_range: check the file's timestamps)"
    if name == "price_continuity":
        return f"  ({meta['breaks']} bar(s) beyond the ATR limit: a wrong symbol's file? see the check in the UI)"
    if name == "silver_matches_bronze":
        return f"  (silver behind bronze in {meta['stale_partitions']} partition(s); re-run: {', '.join(meta['partitions_to_rerun'])})"
    return ""


LAKE_ASSETS = ("raw_candles", "bronze_candles", "silver_features")


def unchanged_partitions(result) -> dict[str, tuple[int, int]]:
    """asset -> (partitions left as they were, partitions in the run), from each partition's `unchanged` flag."""
    flags: dict[str, dict[str, bool]] = {}
    for event in result.get_asset_materialization_events():
        value = event.materialization.metadata.get("unchanged")
        flags.setdefault(event.asset_key.to_user_string(), {})[event.partition] = bool(value and value.value)
    return {asset: (sum(found.values()), len(found)) for asset, found in flags.items()}


def lake_skip_line(result, seconds: float) -> str:
    """Lake: what the incremental run left as it was, in one line."""
    counts = unchanged_partitions(result)
    layers = [(asset.split("_")[0], *counts[asset]) for asset in LAKE_ASSETS if asset in counts]
    if layers and all(kept == total for _, kept, total in layers):
        text = f"{layers[0][2]} of {layers[0][2]} partitions unchanged (same source rows, settings and code), skipped"
    elif not any(kept for _, kept, _ in layers):
        text = f"{layers[0][2] if layers else 0} partitions built in {len(layers)} layer(s), none unchanged"
    else:
        text = "unchanged partitions skipped, the others rebuilt: " + ", ".join(
            f"{name} {kept} of {total} unchanged" for name, kept, total in layers
        )
    return f"Lake: {text} ({seconds:.1f} s)"


def console_tables(rows: int = 10) -> pl.Config:
    """How the CLI and the benchmarks print frames: Markdown-like, no shape or dtype lines, wide enough for a study row."""
    return pl.Config(
        tbl_hide_dataframe_shape=True,
        tbl_hide_column_data_types=True,
        tbl_formatting="ASCII_MARKDOWN",
        tbl_rows=rows,
        tbl_cols=30,
        tbl_width_chars=250,
    )


def print_lake_summary(settings: Settings, result) -> None:
    """What the lake holds and what its run's checks found; `result` None: no run was needed, nothing had changed."""
    print("\nRows per layer and symbol (read back from Delta):")
    with console_tables():
        print(layer_counts(settings))
    tables = LakeTables.under(settings)
    try:
        quarantine = read_rows(tables.quarantine, settings.interval)
    except FileNotFoundError:
        quarantine = pl.DataFrame(schema={"symbol": pl.String, "timestamp": pl.Datetime, "rule": pl.String})
    print(f"\nQuarantined rows: {quarantine.height}")
    for row in quarantine.select("symbol", "timestamp", "rule").head(QUARANTINE_ROWS_SHOWN).iter_rows():
        print(f"  {row[0]} {row[1]:%Y-%m-%d %H:%M}  {row[2]}")
    if quarantine.height > QUARANTINE_ROWS_SHOWN:
        for rule, count in quarantine.group_by("rule").len().sort("rule").iter_rows():
            print(f"  ... {count} row(s) in all: {rule}")
    print("\nChecks:")
    if result is None:
        print("  as the lake's last run left them: nothing they check has changed since (see the Dagster UI)")
        return
    for evaluation in result.get_asset_check_evaluations():
        status = "PASS" if evaluation.passed else ("WARN" if evaluation.severity.value == "WARN" else "FAIL")
        detail = (
            ""
            if evaluation.passed
            else check_detail(evaluation.check_name, {k: v.value for k, v in evaluation.metadata.items()})
        )
        print(f"  {status:4s} {evaluation.asset_key.to_user_string()}.{evaluation.check_name}{detail}")
    print(f"\nRun {'succeeded' if result.success else 'FAILED'}: {result.run_id}")


def training_skip_line(rows: list[dict], seconds: float) -> str:
    """Training: how many studies were reused (training.reuse) and how many versions this run registered."""
    reused = sum(bool(row.get("reused")) for row in rows)
    registered = sum(row.get("version", "-") != "-" and not row.get("reused") for row in rows)
    if rows and reused == len(rows):
        text = (
            f"{reused} of {len(rows)} studies unchanged (same data, settings and code), reused; no version registered"
        )
    else:
        text = (
            f"{len(rows) - reused} of {len(rows)} studies trained ({registered} version(s) registered), {reused} "
            "unchanged (same data, settings and code) and reused"
        )
    return f"Training: {text} ({seconds:.1f} s)"


def time_by_family(rows: list[dict]) -> str:
    """Study time per family over every symbol x target, slowest first, with its phases (training.timing); a reused
    study counts the time its run took when it was trained."""
    totals: dict[str, float] = {}
    phases: dict[str, dict[str, float]] = {}
    for row in rows:
        totals[row["family"]] = totals.get(row["family"], 0.0) + (row.get("study_s") or 0.0)
        for phase, seconds in (row.get("phase_s") or {}).items():
            mine = phases.setdefault(row["family"], {})
            mine[phase] = mine.get(phase, 0.0) + seconds
    lines = [f"Study time by family ({sum(totals.values()):.0f} s in all; reused studies count their run's time):"]
    for family, seconds in sorted(totals.items(), key=lambda item: -item[1]):
        split = ", ".join(f"{phase} {s:.1f}" for phase, s in phases.get(family, {}).items() if s >= 0.05)
        lines.append(f"  {family:22s} {seconds:7.1f} s" + (f"  ({split})" if split else ""))
    return "\n".join(lines)


def print_training_summary(settings: Settings, rows: list[dict], seconds: float | None = None) -> None:
    if not rows:
        print("\nNo studies finished; see the Dagster run log above.")
        return
    if seconds is not None:
        print("\n" + training_skip_line(rows, seconds))
    with console_tables(rows=200):
        for task in ("classification", "regression"):
            # One frame per task, so its columns come in a study row's own order whichever task's rows came first;
            # symbol and target in order (the run's partitions finish in any order), families as they were trained.
            mine = [row for row in rows if task_of(row["target"]) == task]
            if mine:
                part = (
                    pl.DataFrame(mine)
                    .drop("run_id", "reused", "phase_s", strict=False)
                    .sort("symbol", "target", maintain_order=True)
                )
                print(f"\nOut-of-sample results, {task} (walk-forward, {settings.trading.fees_bps:g} bps per side):")
                print(part.select([c for c in part.columns if part[c].null_count() < part.height]))
    print("\n" + time_by_family(rows))
    names = sorted({registered_name(r["symbol"], r["target"]) for r in rows})
    print(f"\nRegistered models: {', '.join(names)}")
    print(f"Compare them in the MLflow UI: make dev, then {settings.tracking.mlflow_ui_url}")


SUMMARY_COLUMNS = {
    "classification": [
        "log_loss",
        "roc_auc",
        "brier",
        "ece",
        "ece_before_calibration",
        "backtest_profit_factor",
        "backtest_trades",
        "backtest_max_drawdown",
        "threshold",
    ],
    "regression": ["pinball_loss", "mae", "mape", "band_coverage"],
}
TRADING = ["threshold", "trades", "profit_factor", "max_drawdown", "sharpe", "hit_rate_trades"]
# The figures a study may produce, in reading order: the evaluation names them, the report labels them.
STUDY_FIGURES = ("reliability", "threshold_sweep", "equity", "quantile_bands")
METRIC_DIGITS, TRADING_DIGITS = 4, 3  # rounded for reading; MLflow keeps the full figures
TRADING_ROWS_SHOWN = 300  # every fold and regime of a partition's studies: 8 families x 5 folds fit with room


@dataclass(frozen=True)
class StudyReport:
    """One symbol x target's studies as people read them: Markdown tables and links, figures by label."""

    summary: list[dict]  # one row per family, metrics rounded: the CLI's table reads these back
    studies: str
    trading_by_fold: str
    trading_by_regime: str
    experiment_url: str
    runs: str  # a Markdown list: each family's MLflow run
    reused: str  # a Markdown list of the studies not retrained, and the run they come from; empty when none
    studies_reused: int
    figures: dict[str, Path] = field(default_factory=dict)  # "plot: {family} {figure}" -> PNG
    best: dict | None = None  # the classifier (not a baseline) with the lowest log loss


def mlflow_run_url(ui_url: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI's page for a run; its router needs the experiment id, /#/experiments/runs/<id> is a 404."""
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def trading_table(parts: list[pl.DataFrame], by: str) -> pl.DataFrame:
    """One row per study and fold (or regime), rounded for reading."""
    if not parts:
        return pl.DataFrame({"symbol": []})
    frame = pl.concat(parts, how="diagonal_relaxed")
    columns = ["symbol", "target", "family", by, *[c for c in TRADING if c in frame.columns]]
    return frame.select(columns).with_columns(pl.col(pl.Float64).round(TRADING_DIGITS))


def study_report(settings: Settings, symbol: str, target: str, outcomes: list) -> StudyReport:
    """What one symbol x target's studies found (training.train's outcomes), for the trained_models page."""
    from itff_platform.models.registry import baselines
    from itff_platform.training.study import experiment_id

    task = task_of(target)
    summaries, by_fold, by_regime, figures, links, reused = [], [], [], {}, [], []
    experiment = experiment_id(settings, symbol, target)
    for outcome in outcomes:
        summaries.append(
            {
                "symbol": symbol,
                "target": target,
                "family": outcome.family,
                "version": outcome.model_version or "-",
                **{k: round(outcome.metrics.get(k, float("nan")), METRIC_DIGITS) for k in SUMMARY_COLUMNS[task]},
                "tradable": outcome.tradable if task == "classification" else None,
                "trials_per_min": round(outcome.trials_per_minute, 1),
                "study_s": round(outcome.seconds, 1),
                "run_id": outcome.run_id,
                "reused": outcome.reused,
                # Where the study's time went (training.timing), for the CLI's time-by-family line.
                "phase_s": {k: round(v, 2) for k, v in (outcome.phases or {}).items()},
            }
        )
        study = {"symbol": symbol, "target": target, "family": outcome.family}
        if outcome.fold_table is not None and "profit_factor" in outcome.fold_table.columns:
            by_fold.append(
                outcome.fold_table.select("fold", *TRADING).with_columns(**{k: pl.lit(v) for k, v in study.items()})
            )
        if outcome.regime_table is not None:
            by_regime.append(outcome.regime_table.with_columns(**{k: pl.lit(v) for k, v in study.items()}))
        link = f"[{outcome.run_id}]({mlflow_run_url(settings.tracking.mlflow_ui_url, experiment, outcome.run_id)})"
        links.append(f"{outcome.family}: {link}")
        if outcome.reused:
            reused.append(f"{outcome.family}: unchanged since run {link} (same data, settings and code)")
        figures.update(
            {
                f"plot: {outcome.family} {name}": outcome.figures[name]
                for name in STUDY_FIGURES
                if name in outcome.figures
            }
        )
    table = pl.DataFrame(summaries)
    classifiers = table.filter(~pl.col("family").is_in(baselines()))
    best = classifiers.sort("log_loss").row(0, named=True) if task == "classification" and classifiers.height else None
    return StudyReport(
        summary=summaries,
        studies=markdown.table(table.drop("run_id", "phase_s")),
        trading_by_fold=markdown.table(trading_table(by_fold, "fold"), TRADING_ROWS_SHOWN),
        trading_by_regime=markdown.table(trading_table(by_regime, "regime"), TRADING_ROWS_SHOWN),
        experiment_url=f"{settings.tracking.mlflow_ui_url.rstrip('/')}/#/experiments/{experiment}",
        runs=markdown.bullets(links),
        reused=markdown.bullets(reused),
        studies_reused=len(reused),
        figures=figures,
        best=best,
    )
