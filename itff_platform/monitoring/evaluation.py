"""One evaluation: live quality of the logged predictions, feature and regime drift against the training
window, and the retrain decisions they lead to. Plain code; the Dagster assets and `itff replay` call it.

A model is sent for retraining when any of these is an error:
- at least `drift_features_for_retrain` features of its symbol drifted (PSI or KS past thresholds calibrated to
  `drift_false_alarm_rate` on the reference period, see drift_calibration), or its symbol's regime mix shifted;
- its live log loss rose too far above what its backtest promised;
- forward_return: its live MAPE is above `drift_mape_error` (runbook 001's 8 %);
- classification: live precision or recall of its rule's long calls over the last `drift_precision_recall_days`
  moved more than `drift_precision_recall_max` from the backtest's, beyond chance (a binomial test at
  `drift_precision_recall_alpha`) (runbooks 000/002: retraining re-selects the threshold).
Unless it was sent for retraining less than `drift_cooldown_days` before: then it is kept, and the reason says
until when. The history is the decisions table, which a replay keeps apart, so the cooldown holds there too."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from itff_platform.settings import Settings

if TYPE_CHECKING:
    from polars._typing import PolarsDataType

DECISION_SCHEMA: dict[str, PolarsDataType] = {
    "decided_at": pl.Datetime("us", "UTC"),
    "as_of": pl.Datetime("us", "UTC"),
    "symbol": pl.String,
    "target": pl.String,
    "decision": pl.String,
    "reasons": pl.String,
}


@dataclass
class Evaluation:
    as_of: datetime
    logged: int = 0
    pending: int = 0
    realized: pl.DataFrame = field(default_factory=pl.DataFrame)
    quality: pl.DataFrame = field(default_factory=pl.DataFrame)
    degradation: list[dict[str, Any]] = field(
        default_factory=list
    )  # per model: symbol, target, expected and live log loss (MAPE), status
    precision_recall: list[dict[str, Any]] = field(
        default_factory=list
    )  # per classification model: live vs backtest precision/recall
    drift: dict[str, pl.DataFrame] = field(default_factory=dict)  # per symbol: feature_drift rows
    regime: dict[str, dict[str, Any]] = field(default_factory=dict)  # per symbol: regime_shift result
    decisions: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=DECISION_SCHEMA))
    expectations: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)

    def retrain(self) -> list[tuple[str, str]]:
        return [
            (r["symbol"], r["target"])
            for r in self.decisions.filter(pl.col("decision") == "retrain").iter_rows(named=True)
        ]


def champion_expectations(settings: Settings) -> dict[tuple[str, str], dict[str, Any]]:
    """What each champion's walk-forward backtest promised (its out-of-sample metrics), its version and its
    last training bar."""
    from itff_platform.training.promotion import champion_versions
    from mlflow import MlflowClient

    client = MlflowClient(settings.tracking_uri)
    found = {}
    for key, version in champion_versions(settings).items():
        assert version.run_id is not None  # champions are registered from study runs
        run = client.get_run(version.run_id)
        found[key] = {
            "version": str(version.version),
            "trained_through": run.data.tags.get("trained_through"),
            **run.data.metrics,
        }
    return found


def evaluate(
    settings: Settings, as_of: datetime | None = None, reports_dir: Path | None = None, with_plots: bool = True
) -> Evaluation:
    """Outcomes, then drift and decisions: what the weekly evaluation job and each replay day run."""
    return evaluate_drift(
        settings, evaluate_outcomes(settings, as_of, reports_dir, with_plots), reports_dir, with_plots
    )


def report_folder(settings: Settings, as_of: datetime, reports_dir: Path | None, with_plots: bool = True) -> Path:
    folder = reports_dir or settings.reports_dir / as_of.strftime("%Y-%m-%d")
    if with_plots:
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def evaluate_outcomes(
    settings: Settings, as_of: datetime | None = None, reports_dir: Path | None = None, with_plots: bool = True
) -> Evaluation:
    """Logged predictions joined with their outcomes; live quality against each champion's backtest."""
    from itff_platform.monitoring.outcomes import realized_from_lake, write_quality_summary
    from itff_platform.monitoring.plots import live_equity_plot, live_reliability_plot
    from itff_platform.monitoring.prediction_log import read_prediction_log
    from itff_platform.monitoring.quality import live_quality_for

    as_of = as_of or datetime.now(UTC)
    folder = report_folder(settings, as_of, reports_dir, with_plots)
    log = read_prediction_log(settings).filter(pl.col("logged_at") <= as_of)
    realized, pending = realized_from_lake(settings, log)
    asked = realized.height + pending
    # An outcome is known only once the bar `label_horizon` bars later has closed, as of this evaluation.
    horizon = timedelta(seconds=settings.interval_seconds * (settings.features.label_horizon + 1))
    realized = realized.filter(pl.col("bar_time") + horizon <= as_of)
    result = Evaluation(as_of=as_of, logged=log.height, pending=asked - realized.height, realized=realized)
    result.quality = live_quality_for(settings, realized, as_of)
    if result.quality.height:
        write_quality_summary(settings, result.quality)
    result.expectations = champion_expectations(settings)
    judge_live(settings, result)
    for (symbol, target), rows in realized.group_by(["symbol", "target"]) if realized.height and with_plots else []:
        if target != "forward_return" and rows["prob_up"].drop_nulls().len() >= 2:
            result.figures[f"reliability {symbol} {target}"] = live_reliability_plot(
                rows,
                f"{symbol} {target}: live reliability ({rows.height} outcomes)",
                folder / f"reliability-{symbol}-{target}.png",
            )
        result.figures[f"equity {symbol} {target}"] = live_equity_plot(
            rows,
            settings.trading.fees_bps,
            f"{symbol} {target}: served signals vs buy and hold, after fees",
            folder / f"equity-{symbol}-{target}.png",
            horizon=settings.features.label_horizon,
        )
    return result


def evaluate_drift(
    settings: Settings, result: Evaluation, reports_dir: Path | None = None, with_plots: bool = True
) -> Evaluation:
    """Feature and regime drift of each symbol, then a keep/retrain decision per model."""
    from itff_platform.monitoring.plots import drift_plot, regime_mix_plot

    folder = report_folder(settings, result.as_of, reports_dir, with_plots)
    _drift(settings, result, result.expectations)
    result.decisions = decide_retraining(settings, result)
    for symbol, drift in result.drift.items() if with_plots else []:
        result.figures[f"drift {symbol}"] = drift_plot(
            drift,
            f"{symbol}: feature drift (PSI), last {settings.monitoring.drift_recent_days} days vs training",
            folder / f"drift-{symbol}.png",
            settings.monitoring.drift_psi_warn,
            settings.monitoring.drift_psi_error,
        )
        shift = result.regime[symbol]
        result.figures[f"regimes {symbol}"] = regime_mix_plot(
            shift["reference_shares"],
            shift["recent_shares"],
            f"{symbol}: regime mix, training vs recent",
            folder / f"regimes-{symbol}.png",
        )
    return result


def judge_live(settings: Settings, result: Evaluation) -> Evaluation:
    """Each champion's live record against its backtest, from result.quality, realized and expectations: log
    loss (or MAPE) in result.degradation, precision/recall of the last days in result.precision_recall."""
    result.degradation = _degradation(settings, result.quality, result.expectations)
    result.precision_recall = precision_recall_drift(settings, result.realized, result.expectations, result.as_of)
    return result


def _degradation(
    settings: Settings, quality: pl.DataFrame, expectations: dict[tuple[str, str], dict[str, Any]]
) -> list[dict[str, Any]]:
    from itff_platform.monitoring.quality import quality_degradation

    rows = []
    # Each champion is judged on its own answers: quality rows are per model version.
    overall = (
        {
            (r["symbol"], r["target"], r["model_version"]): r
            for r in quality.filter(pl.col("scope") == "all").iter_rows(named=True)
        }
        if quality.height
        else {}
    )
    for (symbol, target), expected in expectations.items():
        live = overall.get((symbol, target, str(expected["version"])), {"n": 0})
        if (
            target == "forward_return"
        ):  # a quantile model has no log loss: its MAPE is graded, against runbook 001's bound
            rows.append(
                {
                    "symbol": symbol,
                    "target": target,
                    "champion": expected["version"],
                    "live_mape": live.get("mape"),
                    "expected_mape": expected.get("mape"),
                    **mape_status(live, settings),
                }
            )
            continue
        graded = quality_degradation(live, expected, settings)
        rows.append(
            {
                "symbol": symbol,
                "target": target,
                "champion": expected["version"],
                "expected_log_loss": expected.get("log_loss"),
                "live_log_loss": live.get("log_loss"),
                "live_hit_rate": live.get("hit_rate"),
                "expected_hit_rate": expected.get("backtest_hit_rate_trades"),
                "live_brier": live.get("brier"),
                "expected_brier": expected.get("brier"),
                **graded,
            }
        )
    return rows


def mape_status(live: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Runbook 001's prediction-drift trigger: live MAPE (a fraction) above drift_mape_error is an error.
    'insufficient' below min_live_outcomes outcomes or with no MAPE."""
    n, mape = int(live.get("n") or 0), live.get("mape")
    if n < settings.monitoring.min_live_outcomes or mape is None:
        return {"status": "insufficient", "n": n}
    return {"status": "error" if mape > settings.monitoring.drift_mape_error else "ok", "n": n}


# Any keys: DataFrame(schema=) takes str keys and .cast() str-or-selector keys, and a dict's key type is invariant.
PRECISION_RECALL_SCHEMA: dict[Any, PolarsDataType] = {
    "symbol": pl.String,
    "target": pl.String,
    "model_version": pl.String,
    "n": pl.Int64,
    "long_calls": pl.Int64,
    "positives": pl.Int64,
    "hits": pl.Int64,
    "precision": pl.Float64,
    "recall": pl.Float64,
}


def _long_call(realized: pl.DataFrame) -> pl.Expr:
    """Whether the deployed rule called 'long': prob_up at or above the served threshold, which is what the
    served signal 'long' means, and what the backtest's precision/recall count. A champion whose rule is not
    tradable serves 'flat' whatever it calls; counting its signals would read as recall collapsing to 0."""
    served = pl.col("signal") == "long"
    if "threshold" not in realized.columns:
        return served
    known = pl.col("prob_up").is_not_null() & pl.col("threshold").is_not_null()
    return pl.when(known).then(pl.col("prob_up") >= pl.col("threshold")).otherwise(served)


def live_precision_recall(realized: pl.DataFrame, since: datetime) -> pl.DataFrame:
    """Precision and recall of the deployed rule's long calls (a long call = predicted positive, label 1 =
    positive), per symbol, target and model version, over the classification outcomes of bars from `since` on.
    Precision is null with no long call, recall with no positive, rather than the 0 that would read as a collapse."""
    if realized.is_empty():
        return pl.DataFrame(schema=PRECISION_RECALL_SCHEMA)
    called, positive = _long_call(realized), pl.col("label") == 1
    counts = (
        realized.filter(
            pl.col("bar_time") >= since, pl.col("label").is_not_null(), pl.col("target") != "forward_return"
        )
        .group_by("symbol", "target", "model_version")
        .agg(n=pl.len(), long_calls=called.sum(), positives=positive.sum(), hits=(called & positive).sum())
    )
    return (
        counts.with_columns(
            precision=pl.when(pl.col("long_calls") > 0).then(pl.col("hits") / pl.col("long_calls")),
            recall=pl.when(pl.col("positives") > 0).then(pl.col("hits") / pl.col("positives")),
        )
        .select(list(PRECISION_RECALL_SCHEMA))
        .cast(PRECISION_RECALL_SCHEMA)
    )


# Each rate, and the count it is a share of: precision of the long calls, recall of the up moves.
RATE_DENOMINATORS = {"precision": "long_calls", "recall": "positives"}


def _rate_drift(hits: int, trials: int, expected: float | None, settings: Settings) -> dict[str, Any]:
    """A live rate (hits / trials) against the backtest's: the gap, the two-sided binomial p-value of a live rate
    that far off if the backtest's still held, and whether it drifted: more than drift_precision_recall_max
    off, and unlikely by chance at drift_precision_recall_alpha. Over a week of hourly bars a rate rests on a
    few dozen calls, whose standard error (~0.06) is larger than the 5 points runbooks 000/002 name: the gap
    alone would retrain a stable model every other week."""
    from scipy.stats import binomtest

    if not trials or expected is None:
        return {"gap": None, "p_value": None, "drifted": False}
    gap = hits / trials - expected
    p_value = float(binomtest(hits, trials, min(max(expected, 0.0), 1.0)).pvalue)
    drifted = (
        abs(gap) > settings.monitoring.drift_precision_recall_max
        and p_value < settings.monitoring.drift_precision_recall_alpha
    )
    return {"gap": gap, "p_value": p_value, "drifted": drifted}


def precision_recall_drift(
    settings: Settings, realized: pl.DataFrame, expectations: dict[tuple[str, str], dict[str, Any]], as_of: datetime
) -> list[dict[str, Any]]:
    """Each classification champion's live precision and recall over the last drift_precision_recall_days
    against its backtest's (MLflow `precision`/`recall`): status 'error' when either drifted (_rate_drift),
    'insufficient' below min_live_outcomes outcomes of that version, 'not graded' when the backtest logged neither."""
    live = live_precision_recall(realized, as_of - timedelta(days=settings.monitoring.drift_precision_recall_days))
    by_version = {(r["symbol"], r["target"], r["model_version"]): r for r in live.iter_rows(named=True)}
    rows = []
    for (symbol, target), expected in expectations.items():
        if target == "forward_return":
            continue
        found = by_version.get((symbol, target, str(expected["version"])), {"n": 0})
        row = {"symbol": symbol, "target": target, "champion": expected["version"], "n": found["n"]}
        drifts = {}
        for rate, denominator in RATE_DENOMINATORS.items():
            drifts[rate] = _rate_drift(found.get("hits", 0), found.get(denominator, 0), expected.get(rate), settings)
            row |= {
                f"live_{rate}": found.get(rate),
                f"expected_{rate}": expected.get(rate),
                f"{rate}_p_value": drifts[rate]["p_value"],
            }
        gaps = [abs(d["gap"]) for d in drifts.values() if d["gap"] is not None]
        row["largest_gap"] = max(gaps, default=None)
        if expected.get("precision") is None and expected.get("recall") is None:
            row["status"] = "not graded"
        elif found["n"] < settings.monitoring.min_live_outcomes or not gaps:
            row["status"] = "insufficient"
        else:
            row["status"] = "error" if any(d["drifted"] for d in drifts.values()) else "ok"
        rows.append(row)
    return rows


def _drift(settings: Settings, result: Evaluation, expectations: dict[tuple[str, str], dict[str, Any]]) -> None:
    from itff_platform.features.silver import feature_columns
    from itff_platform.lake.delta import read_rows
    from itff_platform.lake.layers import LakeTables
    from itff_platform.monitoring.drift import feature_drift, regime_shift
    from itff_platform.monitoring.drift_calibration import calibrated_thresholds, regime_thresholds

    silver = LakeTables.under(settings).silver
    recent_start = result.as_of - timedelta(days=settings.monitoring.drift_recent_days)
    features = feature_columns(settings)
    for symbol in settings.symbols:
        trained = [
            e["trained_through"] for (s, _), e in expectations.items() if s == symbol and e.get("trained_through")
        ]
        # The newest bar the champions learned from closes the training window; with no champion, the recent window does.
        reference_end = (
            min(datetime.fromisoformat(max(trained)).replace(tzinfo=UTC), recent_start) if trained else recent_start
        )
        reference = read_rows(
            silver,
            settings.interval,
            symbol,
            reference_end - timedelta(days=settings.monitoring.drift_reference_days),
            reference_end,
        )
        recent = read_rows(silver, settings.interval, symbol, recent_start, result.as_of)
        if reference.is_empty() or recent.is_empty():
            continue
        result.drift[symbol] = feature_drift(
            reference, recent, features, settings, calibrated_thresholds(reference, features, settings)
        )
        result.regime[symbol] = regime_shift(
            reference["regime"], recent["regime"], settings, regime_thresholds(reference, settings)
        )


def _drift_reasons(settings: Settings, drift: pl.DataFrame | None, shift: dict[str, Any]) -> list[str]:
    """Why the symbol's data says retrain, shared by its models: enough features at error, or the regime mix."""
    reasons = []
    drifted = drift.filter(pl.col("status") == "error") if drift is not None else pl.DataFrame()
    if drifted.height >= settings.monitoring.drift_features_for_retrain:
        named = ", ".join(
            f"{r['feature']} (PSI {r['psi']:.3f}/{r['psi_threshold']:.3f}, KS {r['ks']:.3f}/{r['ks_threshold']:.3f})"
            for r in drifted.head(5).iter_rows(named=True)
        )
        reasons.append(f"{drifted.height} features drifted past their calibrated error thresholds: {named}")
    if shift.get("status") == "error":
        reasons.append(f"regime mix shifted: PSI {shift['psi']:.3f} >= {shift['threshold']:.3f}")
    return reasons


def _model_reasons(settings: Settings, result: Evaluation, symbol: str, target: str) -> list[str]:
    """Why the model's own live record says retrain: log loss, MAPE, precision/recall."""
    reasons = []
    for d in result.degradation:
        if (d["symbol"], d["target"]) != (symbol, target) or d["status"] != "error":
            continue
        if target == "forward_return":
            reasons.append(
                f"live MAPE {d['live_mape']:.2%} > {settings.monitoring.drift_mape_error:.0%} (runbook 001) on {d['n']} outcomes"
            )
        else:
            reasons.append(
                f"live log loss {d['live_log_loss']:.4f} is {d['delta_log_loss']:+.4f} over the backtest's "
                f"{d['expected_log_loss']:.4f} on {d['n']} outcomes"
            )
    for d in result.precision_recall:
        if (d["symbol"], d["target"]) == (symbol, target) and d["status"] == "error":
            reasons.append(
                f"precision/recall drift over the last {settings.monitoring.drift_precision_recall_days} days ({d['n']} outcomes): "
                f"precision {_share(d['live_precision'])} vs the backtest's {_share(d['expected_precision'])} "
                f"(p {_share(d['precision_p_value'])}), recall {_share(d['live_recall'])} vs {_share(d['expected_recall'])} "
                f"(p {_share(d['recall_p_value'])}), beyond ±{settings.monitoring.drift_precision_recall_max:g} at p < "
                f"{settings.monitoring.drift_precision_recall_alpha:g}: retraining re-selects the threshold walk-forward"
            )
    return reasons


def _share(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def last_retrain_decisions(settings: Settings, before: datetime) -> dict[tuple[str, str], datetime]:
    """The as-of time of each model's latest retrain decision made before `before`, from the decisions table."""
    history = read_decisions(settings)
    latest = (
        history.filter(pl.col("decision") == "retrain", pl.col("as_of") < before)
        .group_by("symbol", "target")
        .agg(pl.col("as_of").max())
    )
    return {(symbol, target): as_of for symbol, target, as_of in latest.iter_rows()}


def _cooldown_reason(
    settings: Settings, last_retrain: datetime | None, as_of: datetime, reasons: list[str]
) -> str | None:
    """The reason to keep a model that would be retrained, when it was sent for retraining too recently."""
    if last_retrain is None or not settings.monitoring.drift_cooldown_days:
        return None
    ends = last_retrain + timedelta(days=settings.monitoring.drift_cooldown_days)
    if as_of >= ends:
        return None
    return (
        f"cooldown: sent for retraining as of {last_retrain:%Y-%m-%d %H:%M}, not again before {ends:%Y-%m-%d %H:%M} "
        f"(ITFF_DRIFT_COOLDOWN_DAYS={settings.monitoring.drift_cooldown_days}); would retrain for: {'; '.join(reasons)}"
    )


def decide_retraining(settings: Settings, result: Evaluation) -> pl.DataFrame:
    """A keep/retrain decision per champion from the evaluation's drift, live quality and precision/recall,
    with the cooldown read from the decisions table (what was decided before `result.as_of`)."""
    rows = []
    last_retrain = last_retrain_decisions(settings, result.as_of)
    for symbol in settings.symbols:
        data_reasons = _drift_reasons(settings, result.drift.get(symbol), result.regime.get(symbol, {}))
        for target in settings.training.targets:
            if (symbol, target) not in result.expectations:
                continue  # no champion: nothing served, nothing to keep or retrain
            reasons = data_reasons + _model_reasons(settings, result, symbol, target)
            cooldown = (
                _cooldown_reason(settings, last_retrain.get((symbol, target)), result.as_of, reasons)
                if reasons
                else None
            )
            decision = "retrain" if reasons and not cooldown else "keep"
            rows.append(
                {
                    "decided_at": datetime.now(UTC),
                    "as_of": result.as_of,
                    "symbol": symbol,
                    "target": target,
                    "decision": decision,
                    "reasons": cooldown or "; ".join(reasons) or "within thresholds",
                }
            )
    return pl.DataFrame(rows, schema=DECISION_SCHEMA)


def decisions_path(settings: Settings) -> Path:
    return settings.monitoring.root / "decisions"


def record_decisions(settings: Settings, decisions: pl.DataFrame) -> None:
    """Every decision, keep or retrain, appended to a Delta table: the history the UI and replay report from."""
    from deltalake import write_deltalake

    if decisions.height:
        write_deltalake(str(decisions_path(settings)), decisions.to_arrow(), mode="append")


def read_decisions(settings: Settings) -> pl.DataFrame:
    from deltalake import DeltaTable

    path = decisions_path(settings)
    return pl.read_delta(str(path)) if DeltaTable.is_deltatable(str(path)) else pl.DataFrame(schema=DECISION_SCHEMA)


def forget_decisions_from(settings: Settings, since: datetime) -> int:
    """Drop the decisions made as of `since` or later, and say how many: a replay re-decides its days, and its
    earlier run's decisions over them (maybe under other settings) must not put its models in cooldown."""
    decisions = read_decisions(settings)
    kept = decisions.filter(pl.col("as_of") < since)
    if kept.height < decisions.height:
        kept.write_delta(str(decisions_path(settings)), mode="overwrite")
    return decisions.height - kept.height
