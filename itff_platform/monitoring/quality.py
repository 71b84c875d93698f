"""Live prediction quality: how served predictions fared once their horizon passed, per model version, overall
and per regime, beside what the same version's backtest promised.

`realized` holds one row per served prediction whose outcome is known: symbol, target, model_version,
bar_time, regime, prob_up (null for regression), signal (long/short/flat, as served), label (realized 0/1 for
classification targets), forward_return (realized log return over the horizon), p50 (predicted median log
return, regression only), close (the close of the bar predicted from) and latency_ms.

Trading figures follow training/backtest.py, so live and backtest compare directly: a trade is taken every
`horizon` rows of a version's predictions in time order (holding periods never overlap), each pays fees on
both sides, and a short earns log(2 - exp(r)). Probability figures use every realized prediction."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import polars as pl

from itff_platform.contracts.consensus import is_ensemble
from itff_platform.monitoring.drift import grade
from itff_platform.rules import REGIMES, registered_name
from itff_platform.settings import Settings
from itff_platform.training.metrics import EVEN_ODDS, classification_metrics, regression_metrics

if TYPE_CHECKING:
    from polars._typing import PolarsDataType

INSUFFICIENT = "insufficient"
VERSION = ["symbol", "target", "model_version"]
KEYS = [*VERSION, "scope"]
BACKTEST_METRICS = ["backtest_hit_rate_trades", "backtest_profit_factor", "backtest_max_drawdown"]
# Any keys: DataFrame(schema=) takes str keys and .cast() str-or-selector keys, and a dict's key type is invariant.
QUALITY_SCHEMA: dict[Any, PolarsDataType] = {
    "symbol": pl.String,
    "target": pl.String,
    "model_version": pl.String,
    "scope": pl.String,
    "n": pl.Int64,
    "trades": pl.Int64,
    "hit_rate": pl.Float64,
    "profit_factor": pl.Float64,
    "max_drawdown": pl.Float64,
    "mean_trade_return_after_fees": pl.Float64,
    "latency_p95_ms": pl.Float64,
    "brier": pl.Float64,
    "log_loss": pl.Float64,
    "ece": pl.Float64,
    "mape": pl.Float64,
    **{name: pl.Float64 for name in BACKTEST_METRICS},
    "last_bar": pl.Datetime("us", "UTC"),
}
SCORE_SCHEMA: dict[str, PolarsDataType] = {
    **{k: pl.String for k in KEYS},
    "brier": pl.Float64,
    "log_loss": pl.Float64,
    "ece": pl.Float64,
    "mape": pl.Float64,
}
BPS_PER_UNIT = 1e4  # fees_bps are basis points of the traded amount (paid on entry and on exit: twice a trade)
SHORT_FLOOR = 1e-6  # a short's 2 - exp(r) reaches 0 when the price doubles: it loses everything, not log(0)


def trade_return_after_fees(fees_bps: float) -> pl.Expr:
    """Log return of each row's trade after a round trip of fees; null when flat. Same convention as the
    backtest: a short earns log(2 - exp(r)), what a short position actually makes, rather than -r."""
    cost = 2 * fees_bps / BPS_PER_UNIT
    move, signal = pl.col("forward_return"), pl.col("signal")
    short = (2 - move.exp()).clip(lower_bound=SHORT_FLOOR).log()
    return pl.when(signal == "long").then(move - cost).when(signal == "short").then(short - cost).otherwise(None)


def in_window(realized: pl.DataFrame, as_of: datetime, days: int) -> pl.DataFrame:
    """The predictions whose bar lies in the `days` before `as_of`: live quality judges the recent past, not
    everything a version ever answered."""
    return realized.filter(pl.col("bar_time") > as_of - timedelta(days=days), pl.col("bar_time") <= as_of)


def _trade_schedule(realized: pl.DataFrame, horizon: int) -> pl.DataFrame:
    """Every `horizon`-th prediction of each version in time order: the trades the backtest would take."""
    position = pl.col("bar_time").rank("ordinal").over(VERSION) - 1
    return realized.filter(position % horizon == 0).sort("bar_time")


def _trading(scheduled: pl.DataFrame, fees_bps: float) -> pl.DataFrame:
    """Trades, hit rate and mean return after fees, profit factor and max drawdown of the equity of the
    scheduled trades (flat rows earn 0), per scope. Null where nothing traded."""
    net, traded = pl.col("net"), pl.col("signal").is_in(["long", "short"])
    equity = net.cum_sum().exp()
    frame = scheduled.with_columns(net=trade_return_after_fees(fees_bps).fill_null(0.0))
    summary = frame.group_by(KEYS).agg(  # rows keep their time order inside each group
        trades=traded.sum().cast(pl.Int64),
        hit_rate=(net > 0).filter(traded).cast(pl.Float64).mean(),
        mean_trade_return_after_fees=net.filter(traded).mean(),
        gains=net.filter(net > 0).sum(),
        losses=-net.filter(net < 0).sum(),
        max_drawdown=(
            1 - equity / equity.cum_max().clip(lower_bound=1.0)
        ).max(),  # peaks start at 1, as in the backtest
    )
    gains, losses, any_trade = pl.col("gains"), pl.col("losses"), pl.col("trades") > 0
    return summary.with_columns(
        profit_factor=pl.when(losses > 0).then(gains / losses).when(gains > 0).then(float("inf")),
        max_drawdown=pl.when(any_trade).then(pl.col("max_drawdown")),
    ).drop("gains", "losses")


def _scored(group: pl.DataFrame) -> dict[str, float | None]:
    """Probability quality (classification) or price MAPE (regression), with the training metric functions."""
    out: dict[str, float | None] = {"brier": None, "log_loss": None, "ece": None, "mape": None}
    classified = group.filter(pl.col("prob_up").is_not_null() & pl.col("label").is_not_null())
    if classified.height:
        labels, prob = classified["label"].cast(pl.Int64).to_numpy(), classified["prob_up"].to_numpy()
        scores = classification_metrics(labels, prob, threshold=EVEN_ODDS)  # the threshold-free scores are kept
        out.update(brier=scores["brier"], log_loss=scores["log_loss"], ece=scores["ece"])
    regressed = group.filter(pl.col("p50").is_not_null() & pl.col("close").is_not_null())
    if regressed.height:
        p50 = regressed["p50"].to_numpy()
        # Only the median is judged here; regression_metrics wants P10/P50/P90, so the median fills all three.
        bands = np.column_stack([p50, p50, p50])
        scores = regression_metrics(regressed["forward_return"].to_numpy(), bands, regressed["close"].to_numpy())
        out["mape"] = scores["mape"]  # a fraction, as training logs it, so live and backtest compare directly
    return out


def _scope_order() -> pl.Expr:
    order = ["all", *REGIMES]
    return pl.col("scope").replace_strict(order, list(range(len(order))), default=len(order))


def _scopes(realized: pl.DataFrame) -> pl.DataFrame:
    return pl.concat([realized.with_columns(scope=pl.lit("all")), realized.with_columns(scope=pl.col("regime"))])


def live_quality(
    realized: pl.DataFrame, fees_bps: float, horizon: int = 1, backtest: pl.DataFrame | None = None
) -> pl.DataFrame:
    """One row per (symbol, target, model_version, scope), scope 'all' or a regime: n (realized predictions),
    trades, hit_rate (share of trades that made money after fees), profit_factor, max_drawdown and
    mean_trade_return_after_fees (trades every `horizon` predictions, as in the backtest), latency_p95_ms,
    brier, log_loss, ece, and mape (a fraction, of the price close*exp(p50) against the realized
    close*exp(forward_return)); beside the 'all' rows, the version's backtest figures from `backtest`
    (VERSION columns plus BACKTEST_METRICS); and last_bar, the newest bar the version answered.

    Metrics that do not apply are null. Rows are ordered so that each (symbol, target)'s most recently
    serving version comes last. Rows whose forward_return is still null are left out."""
    realized = realized.filter(pl.col("forward_return").is_not_null())
    if not realized.height:
        return pl.DataFrame(schema=QUALITY_SCHEMA)
    realized = realized.with_columns(pl.col("regime").fill_null("unknown"), pl.col("model_version").cast(pl.String))
    scoped = _scopes(realized)
    counts = scoped.group_by(KEYS).agg(
        n=pl.len().cast(pl.Int64), latency_p95_ms=pl.col("latency_ms").quantile(0.95, "linear")
    )
    scores = pl.DataFrame(
        [
            {**dict(zip(KEYS, key, strict=True)), **_scored(group)}
            for key, group in scoped.partition_by(KEYS, as_dict=True).items()
        ],
        schema=SCORE_SCHEMA,
    )
    trading = _trading(_scopes(_trade_schedule(realized, horizon)), fees_bps)
    latest = realized.group_by(VERSION).agg(last_bar=pl.col("bar_time").max())
    figures = (
        backtest
        if backtest is not None
        else pl.DataFrame(schema={**{k: pl.String for k in VERSION}, **{m: pl.Float64 for m in BACKTEST_METRICS}})
    )
    return (
        counts.join(trading, on=KEYS, how="left")
        .join(scores, on=KEYS, how="left")
        .join(figures.select(*VERSION, *BACKTEST_METRICS), on=VERSION, how="left")
        # A regime row beside the version's overall backtest would compare unlike with unlike.
        .with_columns(pl.when(pl.col("scope") == "all").then(pl.col(m)).alias(m) for m in BACKTEST_METRICS)
        .join(latest, on=VERSION, how="left")
        .sort(
            pl.col("symbol"),
            pl.col("target"),
            pl.col("last_bar"),
            pl.col("model_version").cast(pl.Int64, strict=False),
            _scope_order(),
            pl.col("scope"),
        )
        .select(list(QUALITY_SCHEMA))
        .cast(QUALITY_SCHEMA)
    )


def version_backtests(settings: Settings, versions: pl.DataFrame) -> pl.DataFrame:
    """The walk-forward backtest figures MLflow holds for each (symbol, target, model_version) in `versions`:
    the metrics of the run that registered the version. A version or run no longer in the registry gets nulls."""
    from mlflow.exceptions import MlflowException

    from mlflow import MlflowClient

    rows: list[dict[str, Any]] = []
    client = None
    for symbol, target, version in versions.select(VERSION).unique().iter_rows():  # a handful of registry calls
        if is_ensemble(version):  # a /consensus ensemble has no run of its own, and no backtest
            rows.append({"symbol": symbol, "target": target, "model_version": version})
            continue
        client = client or MlflowClient(settings.tracking_uri)
        try:
            metrics = client.get_run(
                # cast, not assert: a run-less version would fail here as before, inside the try.
                cast(str, client.get_model_version(registered_name(symbol, target), version).run_id)
            ).data.metrics
        except MlflowException:
            metrics = {}
        rows.append(
            {
                "symbol": symbol,
                "target": target,
                "model_version": version,
                **{m: metrics.get(m) for m in BACKTEST_METRICS},
            }
        )
    return pl.DataFrame(rows, schema={**{k: pl.String for k in VERSION}, **{m: pl.Float64 for m in BACKTEST_METRICS}})


def live_quality_for(settings: Settings, realized: pl.DataFrame, as_of: datetime) -> pl.DataFrame:
    """live_quality over the `live_quality_window_days` before `as_of`, with the settings' fees and horizon,
    each version beside its own backtest."""
    recent = in_window(
        realized.filter(pl.col("forward_return").is_not_null()), as_of, settings.monitoring.live_quality_window_days
    )
    backtest = version_backtests(settings, recent) if recent.height else None
    return live_quality(recent, settings.trading.fees_bps, settings.features.label_horizon, backtest)


def quality_degradation(live: dict[str, float], expected: dict[str, float], settings: Settings) -> dict[str, Any]:
    """Live log loss against the champion's holdout log loss (`expected["log_loss"]`).

    `live` needs "n" (realized outcomes) and "log_loss", e.g. a live_quality row with scope 'all'. Returns
    {"delta_log_loss", "status", "n"}; status is 'insufficient' below settings.min_live_outcomes outcomes
    (or with no log loss to compare), else graded by quality_log_loss_warn/error on the increase."""
    n = int(live.get("n") or 0)
    live_loss, expected_loss = live.get("log_loss"), expected.get("log_loss")
    known = all(v is not None and np.isfinite(v) for v in (live_loss, expected_loss))
    delta = float(cast(float, live_loss) - cast(float, expected_loss)) if known else None
    if n < settings.monitoring.min_live_outcomes or delta is None:
        return {"delta_log_loss": delta, "status": INSUFFICIENT, "n": n}
    return {
        "delta_log_loss": delta,
        "status": grade(delta, settings.monitoring.quality_log_loss_warn, settings.monitoring.quality_log_loss_error),
        "n": n,
    }
