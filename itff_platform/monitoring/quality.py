"""Live prediction quality: how served predictions fared once their horizon passed, overall and per regime,
and whether that is meaningfully worse than the backtest promised.

`realized` holds one row per served prediction whose outcome is known: symbol, target, regime, prob_up
(null for regression), signal (long/short/flat), label (realized 0/1 for classification targets),
forward_return (realized log return over the horizon), p50 (predicted median log return, regression only)
and close (the close of the bar predicted from)."""

from __future__ import annotations

import numpy as np
import polars as pl

from itff_platform.features.regime import REGIMES
from itff_platform.monitoring.drift import grade
from itff_platform.settings import Settings
from itff_platform.training.metrics import classification_metrics, regression_metrics

INSUFFICIENT = "insufficient"
KEYS = ["symbol", "target", "scope"]
QUALITY_SCHEMA = {
    "symbol": pl.String, "target": pl.String, "scope": pl.String, "n": pl.Int64, "hit_rate": pl.Float64,
    "brier": pl.Float64, "log_loss": pl.Float64, "ece": pl.Float64, "trades": pl.Int64,
    "mean_trade_return_after_fees": pl.Float64, "mape": pl.Float64,
}


def trade_return_after_fees(fees_bps: float) -> pl.Expr:
    """Log return of each row's trade after a round trip of fees; null when flat. Same convention as the
    backtest: a short earns log(2 - exp(r)), what a short position actually makes, rather than -r."""
    cost = 2 * fees_bps / 1e4
    move, signal = pl.col("forward_return"), pl.col("signal")
    short = (2 - move.exp()).clip(lower_bound=1e-6).log()
    return pl.when(signal == "long").then(move - cost).when(signal == "short").then(short - cost).otherwise(None)


def _trading(realized: pl.DataFrame, fees_bps: float) -> pl.DataFrame:
    traded = pl.col("signal").is_in(["long", "short"])
    right_way = ((pl.col("signal") == "long") & (pl.col("forward_return") > 0)) | (
        (pl.col("signal") == "short") & (pl.col("forward_return") < 0))
    return realized.group_by(KEYS).agg(
        n=pl.len().cast(pl.Int64),
        trades=traded.sum().cast(pl.Int64),
        # mean() over only the traded rows: null when nothing traded, which is what "no hit rate" should read.
        hit_rate=right_way.filter(traded).cast(pl.Float64).mean(),
        mean_trade_return_after_fees=trade_return_after_fees(fees_bps).mean(),
    )


def _scored(group: pl.DataFrame) -> dict[str, float | None]:
    """Probability quality (classification) or price MAPE (regression), with the training metric functions."""
    out: dict[str, float | None] = {"brier": None, "log_loss": None, "ece": None, "mape": None}
    classified = group.filter(pl.col("prob_up").is_not_null() & pl.col("label").is_not_null())
    if classified.height:
        labels, prob = classified["label"].cast(pl.Int64).to_numpy(), classified["prob_up"].to_numpy()
        scores = classification_metrics(labels, prob, threshold=0.5)
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


def live_quality(realized: pl.DataFrame, fees_bps: float) -> pl.DataFrame:
    """One row per (symbol, target, scope), scope 'all' or a regime: n, hit_rate, brier, log_loss, ece,
    trades, mean_trade_return_after_fees and mape (a fraction, of the price close*exp(p50) against the
    realized close*exp(forward_return)). Metrics that do not apply to the target are null. Rows whose
    forward_return is still null (horizon not yet passed) are left out."""
    realized = realized.filter(pl.col("forward_return").is_not_null())
    if not realized.height:
        return pl.DataFrame(schema=QUALITY_SCHEMA)
    realized = realized.with_columns(pl.col("regime").fill_null("unknown"))
    scoped = pl.concat([realized.with_columns(scope=pl.lit("all")), realized.with_columns(scope=pl.col("regime"))])
    trading = _trading(scoped, fees_bps)
    scores = pl.DataFrame(
        [{**dict(zip(KEYS, key)), **_scored(group)} for key, group in scoped.partition_by(KEYS, as_dict=True).items()],
        schema={**{k: pl.String for k in KEYS}, "brier": pl.Float64, "log_loss": pl.Float64, "ece": pl.Float64,
                "mape": pl.Float64},
    )
    return (
        trading.join(scores, on=KEYS, how="left")
        .sort(pl.col("symbol"), pl.col("target"), _scope_order(), pl.col("scope"))
        .select(list(QUALITY_SCHEMA))
        .cast(QUALITY_SCHEMA)
    )


def quality_degradation(live: dict[str, float], expected: dict[str, float], settings: Settings) -> dict:
    """Live log loss against the champion's holdout log loss (`expected["log_loss"]`).

    `live` needs "n" (realized outcomes) and "log_loss", e.g. a live_quality row with scope 'all'. Returns
    {"delta_log_loss", "status", "n"}; status is 'insufficient' below settings.min_live_outcomes outcomes
    (or with no log loss to compare), else graded by quality_log_loss_warn/error on the increase."""
    n = int(live.get("n") or 0)
    live_loss, expected_loss = live.get("log_loss"), expected.get("log_loss")
    known = all(v is not None and np.isfinite(v) for v in (live_loss, expected_loss))
    delta = float(live_loss - expected_loss) if known else None
    if n < settings.min_live_outcomes or delta is None:
        return {"delta_log_loss": delta, "status": INSUFFICIENT, "n": n}
    return {"delta_log_loss": delta, "status": grade(delta, settings.quality_log_loss_warn, settings.quality_log_loss_error),
            "n": n}
