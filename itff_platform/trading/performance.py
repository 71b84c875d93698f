"""How the paper account did (runbook 004's 30-day validation): from the ledger, the autopilot's decisions and
the lake's bars, the figures that decide whether paper may become live.

- The account, marked to market at every bar's close: equity curve, return, Sharpe and max drawdown.
- Each filled order scored as the backtest scores a trade (training/backtest.py): held over the label horizon from
  its fill price, short earning log(2 - exp(r)), paying the fee on entry and the fee and slippage on exit
  (contracts/costs.py): hit rate and profit factor, through the backtest's own `trading_metrics`.
- The backtest of the consensus's allowed signals over the same bars (`backtest`, `combine_backtests`), a trade
  on every bar the consensus allowed, scored per trade: what the rule promised, beside what the orders made of it.
  Both columns are per trade (the orders' `net`, the backtest's trades); the account's Sharpe and drawdown, diluted
  by the cash it does not invest, are rows of their own with nothing from the backtest beside them.
- Slippage in bps: each fill against the broker's reference price (the next bar's open) and against the close the
  order was decided on.
- Calibration: the orders' confidence, in bins, against how often their side was right over the horizon.
- Error rate and latency (p50, p95) from the decisions.
Acceptance follows runbook 004: error rate < 1 %, p95 latency < 500 ms, calibration within ±5 %, no risk limit hit."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from itff_platform.contracts.costs import BPS, side_cost
from itff_platform.settings import Settings
from itff_platform.training.backtest import backtest, combine_backtests, trading_metrics

CONFIDENCE_BINS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
CALIBRATION_TOLERANCE = 0.05  # runbook 004: confidence within ±5 % of the realised win rate
MAX_ERROR_RATE = 0.01
MAX_P95_MS = 500.0
SHORT_FLOOR = 1e-6  # as the backtest: a short loses everything when the price doubles, not log(0)
UTC_TIME = pl.Datetime("us", "UTC")
DIRECTION = {"buy": 1, "sell": -1, "long": 1, "short": -1}


@dataclass(frozen=True)
class Costs:
    fees_bps: float
    slippage_bps: float
    horizon: int  # bars an order is scored over (the label horizon)
    bars_per_year: float


def period(decisions: pl.DataFrame) -> tuple[Any, Any]:
    """The first and last bar decided on (None, None without decisions)."""
    return decisions["bar_time"].min(), decisions["bar_time"].max()


def latest_decisions(decisions: pl.DataFrame) -> pl.DataFrame:
    """One decision per symbol and bar, the newest: a re-run decides a bar again (and replays its order)."""
    return decisions.sort("decided_at").unique(["symbol", "bar_time"], keep="last").sort(["bar_time", "symbol"])


def scored_orders(fills: pl.DataFrame, bars: pl.DataFrame, costs: Costs) -> pl.DataFrame:
    """Each fill with the bar it was decided on: its trade return over the horizon after costs (`net`), whether
    its side was right (`right`), and its slippage in bps. `fills`: the ledger's fill rows; `bars`: symbol,
    timestamp, close, forward_return. Fills whose horizon has not passed have a null net."""
    direction = pl.col("side").replace_strict(DIRECTION, return_dtype=pl.Int8)
    joined = fills.join(
        bars.select("symbol", pl.col("timestamp").alias("decided_bar"), "close", "forward_return"),
        on=["symbol", "decided_bar"],
        how="left",
    )
    move = ((pl.col("close") / pl.col("price")).log() + pl.col("forward_return")).alias("move")  # fill -> exit
    gross = pl.when(direction > 0).then(move).otherwise((2 - move.exp()).clip(lower_bound=SHORT_FLOOR).log())
    exit_and_entry = side_cost(costs.fees_bps) + side_cost(costs.fees_bps, costs.slippage_bps)
    return joined.with_columns(
        direction=direction,
        net=gross - exit_and_entry,
        right=pl.when(pl.col("forward_return").is_not_null()).then(direction * pl.col("forward_return") > 0),
        slippage_bps=(pl.col("price") / pl.col("reference_price") - 1) * direction / BPS,
        shortfall_bps=(pl.col("price") / pl.col("close") - 1) * direction / BPS,
    )


def equity_curve(fills: pl.DataFrame, bars: pl.DataFrame, starting_cash: float) -> pl.DataFrame:
    """The account at every bar's close: cash after the fills so far plus each position at the bar's close.
    A fill at a bar's open (its price_bar) is held at that bar's close."""
    timeline = bars.select("timestamp").unique().sort("timestamp")
    done = fills.sort("seq")
    cash = (
        done.group_by("price_bar").agg(pl.col("cash_after").last()).sort("price_bar").rename({"price_bar": "timestamp"})
    )
    curve = timeline.join_asof(cash, on="timestamp").with_columns(pl.col("cash_after").fill_null(starting_cash))
    value = pl.lit(0.0)
    for i, symbol in enumerate(sorted(set(bars["symbol"].to_list()))):
        closes = bars.filter(pl.col("symbol") == symbol).select("timestamp", pl.col("close").alias(f"close_{i}"))
        held = (
            done.filter(pl.col("symbol") == symbol)
            .group_by("price_bar")
            .agg(pl.col("position_after").last().alias(f"units_{i}"))
            .sort("price_bar")
            .rename({"price_bar": "timestamp"})
        )
        curve = curve.join_asof(closes.sort("timestamp"), on="timestamp").join_asof(held, on="timestamp")
        value = value + pl.col(f"units_{i}").fill_null(0.0) * pl.col(f"close_{i}").fill_null(0.0)
    return curve.select("timestamp", equity=pl.col("cash_after") + value)


def account_figures(equity: np.ndarray, costs: Costs) -> dict[str, float]:
    """Sharpe, drawdown and return of the whole account (cash included), on its bar-by-bar log returns."""
    returns = np.diff(np.log(equity)) if len(equity) > 1 else np.zeros(0)
    figures = trading_metrics(returns, returns != 0, costs.bars_per_year)
    return {k: figures[k] for k in ("sharpe", "max_drawdown", "strategy_return")}


PER_TRADE = ("trades", "hit_rate_trades", "profit_factor", "mean_net")


def per_trade(net: np.ndarray, costs: Costs) -> dict[str, float]:
    """Trades, hit rate, profit factor and mean net log return of a set of trades' net returns."""
    figures = trading_metrics(net, np.ones(len(net), dtype=bool), costs.bars_per_year)
    return {**figures, "mean_net": float(net.mean()) if len(net) else float("nan")}


def order_figures(orders: pl.DataFrame, costs: Costs) -> dict[str, float]:
    """The orders whose horizon has passed, each one trade, as the backtest counts its trades."""
    figures = per_trade(orders["net"].drop_nulls().to_numpy(), costs)
    return {k: figures[k] for k in PER_TRADE}


def backtest_figures(decisions: pl.DataFrame, bars: pl.DataFrame, costs: Costs) -> dict[str, float]:
    """The backtest of what the consensus allowed over the bars it was asked about, measured as the orders are:
    a bar it held (the confidence gate, a rule not tradable) is no trade (its threshold NaN: flat), and every
    allowed bar is a trade held over the horizon (the autopilot may order every bar, so no stepping by it)."""
    asked = (
        decisions.filter(pl.col("prob_long").is_not_null())
        .with_columns(
            pl.when(pl.col("allow").fill_null(False))
            .then(pl.col("decision_threshold"))
            .otherwise(float("nan"))
            .alias("decision_threshold")
        )
        .join(bars.select("symbol", pl.col("timestamp").alias("bar_time"), "forward_return"), on=["symbol", "bar_time"])
    )
    parts = []
    for symbol in sorted(set(asked["symbol"].to_list())):
        mine = asked.filter(pl.col("symbol") == symbol, pl.col("forward_return").is_not_null()).sort("bar_time")
        if mine.height:
            parts.append(
                backtest(
                    mine["prob_long"].to_numpy(),
                    mine["forward_return"].to_numpy(),
                    mine["decision_threshold"].to_numpy(),
                    costs.fees_bps,
                    1,
                    costs.bars_per_year,
                )
            )
    if not parts:
        return {}
    combined = combine_backtests(parts, costs.bars_per_year)
    net, positions = combined.net_returns, combined.positions
    assert net is not None and positions is not None  # combine_backtests always sets both
    figures = per_trade(net[positions != 0], costs)
    return {k: figures[k] for k in PER_TRADE}


def calibration_table(orders: pl.DataFrame) -> pl.DataFrame:
    """Per confidence bin: orders, their mean confidence, how often their side was right, and the gap."""
    edges = list(CONFIDENCE_BINS)
    scored = orders.filter(pl.col("right").is_not_null(), pl.col("confidence").is_not_null())
    index = ((pl.col("confidence") - edges[0]) / (edges[1] - edges[0])).floor().clip(0, len(edges) - 2).cast(pl.Int64)
    table = (
        scored.group_by(index.alias("bin"))
        .agg(
            n=pl.len(),
            mean_confidence=pl.col("confidence").mean(),
            win_rate=pl.col("right").cast(pl.Float64).mean(),
        )
        .sort("bin")
    )
    labels = [f"{lo:.1f}-{hi:.1f}" for lo, hi in pairwise(edges)]
    return table.with_columns(
        pl.col("bin").replace_strict(dict(enumerate(labels)), return_dtype=pl.String).alias("confidence"),
        gap=pl.col("win_rate") - pl.col("mean_confidence"),
    ).select("confidence", "n", "mean_confidence", "win_rate", "gap")


def calibration_gap(table: pl.DataFrame) -> float | None:
    """The orders' mean |win rate - confidence| over the bins (weighted by orders): None without any."""
    if table.is_empty():
        return None
    return float(np.average(table["gap"].abs().to_numpy(), weights=table["n"].to_numpy()))


def service_figures(decisions: pl.DataFrame) -> dict[str, Any]:
    counts = decisions["outcome"].value_counts()
    by_outcome = dict(zip(counts["outcome"].to_list(), counts["count"].to_list(), strict=True))
    total = decisions.height
    latency = decisions["latency_ms"].drop_nulls()
    refused = decisions.filter(pl.col("outcome") == "refused")["http_status"].value_counts()
    return {
        "decisions": total,
        **{name: int(by_outcome.get(name, 0)) for name in ("ordered", "held", "refused", "error")},
        "refused_by_status": {
            str(k): int(v) for k, v in zip(refused["http_status"].to_list(), refused["count"].to_list(), strict=True)
        },
        "error_rate": by_outcome.get("error", 0) / total if total else None,
        "latency_p50_ms": float(latency.quantile(0.5, "linear")) if len(latency) else None,  # type: ignore[arg-type]
        "latency_p95_ms": float(latency.quantile(0.95, "linear")) if len(latency) else None,  # type: ignore[arg-type]
    }


@dataclass
class PaperReport:
    start: datetime | None
    end: datetime | None
    live: dict[str, Any]  # per order (PER_TRADE)
    account: dict[str, Any]  # the whole account's Sharpe, drawdown and return
    backtest: dict[str, Any]  # per trade (PER_TRADE)
    slippage: dict[str, Any]
    service: dict[str, Any]
    calibration: pl.DataFrame
    equity: pl.DataFrame
    risk_breached: bool
    figures: dict[str, Path] = field(default_factory=dict)

    @property
    def calibration_gap(self) -> float | None:
        return calibration_gap(self.calibration)

    def acceptance(self) -> dict[str, bool | None]:
        """Runbook 004's bar for moving from paper to live; None where there is nothing to judge yet."""
        p95, error_rate, gap = self.service["latency_p95_ms"], self.service["error_rate"], self.calibration_gap
        return {
            "error rate < 1 %": None if error_rate is None else error_rate < MAX_ERROR_RATE,
            "p95 latency < 500 ms": None if p95 is None else p95 < MAX_P95_MS,
            "calibration within ±5 %": None if gap is None else gap <= CALIBRATION_TOLERANCE,
            "no risk-limit breach": not self.risk_breached,
        }

    def headline(self) -> dict[str, Any]:
        return {
            "decisions": self.service["decisions"],
            "orders": self.service["ordered"],
            "profit_factor": self.live.get("profit_factor"),
            "backtest_profit_factor": self.backtest.get("profit_factor"),
            "hit_rate": self.live.get("hit_rate_trades"),
            "backtest_hit_rate": self.backtest.get("hit_rate_trades"),
            "mean_net_per_order": self.live.get("mean_net"),
            "backtest_mean_net_per_trade": self.backtest.get("mean_net"),
            "account_return": self.account.get("strategy_return"),
            "account_max_drawdown": self.account.get("max_drawdown"),
            "account_sharpe": self.account.get("sharpe"),
            "slippage_bps": self.slippage.get("mean_bps"),
            "calibration_gap": self.calibration_gap,
            "error_rate": self.service["error_rate"],
            "latency_p95_ms": self.service["latency_p95_ms"],
        }

    def markdown(self) -> str:
        period = f"{self.start:%Y-%m-%d %H:%M} .. {self.end:%Y-%m-%d %H:%M} UTC" if self.start and self.end else "-"
        rows = [
            [name, _fmt(self.live.get(key)), _fmt(self.backtest.get(key))]
            for name, key in (
                ("trades (orders scored)", "trades"),
                ("hit rate", "hit_rate_trades"),
                ("profit factor", "profit_factor"),
                ("mean net log return per trade", "mean_net"),
            )
        ]
        rows += [
            [name, _fmt(self.account.get(key)), "-"]
            for name, key in (
                ("account Sharpe (annualised, cash included)", "sharpe"),
                ("account max drawdown", "max_drawdown"),
                ("account return", "strategy_return"),
            )
        ]
        accept = [
            [name, {True: "pass", False: "FAIL", None: "nothing to judge"}[ok]]
            for name, ok in self.acceptance().items()
        ]
        calibration = [
            [r["confidence"], r["n"], _fmt(r["mean_confidence"]), _fmt(r["win_rate"]), _fmt(r["gap"])]
            for r in self.calibration.iter_rows(named=True)
        ]
        s, v = self.service, self.slippage
        lines = [
            f"# Paper trading: {period}",
            "",
            f"{s['decisions']} decisions: {s['ordered']} ordered, {s['held']} held, {s['refused']} refused "
            f"{s['refused_by_status'] or ''}, {s['error']} errors (error rate {_fmt(s['error_rate'])}); "
            f"latency p50 {_fmt(s['latency_p50_ms'])} ms, p95 {_fmt(s['latency_p95_ms'])} ms.",
            "",
            table(["figure", "paper (per order)", "backtest, same bars (per trade)"], rows),
            "",
            f"Slippage: {_fmt(v.get('mean_bps'))} bps mean against the reference (next open), "
            f"{_fmt(v.get('shortfall_mean_bps'))} bps mean against the decision bar's close "
            f"(p95 {_fmt(v.get('shortfall_p95_bps'))} bps), over {v.get('fills', 0)} fills.",
            "",
            f"Calibration (orders whose horizon passed): gap {_fmt(self.calibration_gap)}",
            "",
            table(["confidence", "orders", "mean confidence", "win rate", "gap"], calibration) if calibration else "-",
            "",
            "Acceptance (runbook 004):",
            "",
            table(["criterion", "result"], accept),
        ]
        return "\n".join(lines) + "\n"


def table(headers: list[str], rows: list[list[Any]]) -> str:
    from itff_platform.markdown import table as markdown_table

    return markdown_table(pl.DataFrame([[str(cell) for cell in row] for row in rows], schema=headers, orient="row"))


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if np.isfinite(value) else str(value)
    return str(value)


def slippage_figures(orders: pl.DataFrame) -> dict[str, Any]:
    if orders.is_empty():
        return {"fills": 0}
    shortfall = orders["shortfall_bps"].drop_nulls()
    return {
        "fills": orders.height,
        "mean_bps": float(orders["slippage_bps"].mean()),  # type: ignore[arg-type]
        "shortfall_mean_bps": float(shortfall.mean()) if len(shortfall) else None,  # type: ignore[arg-type]
        "shortfall_p95_bps": float(shortfall.quantile(0.95, "linear")) if len(shortfall) else None,  # type: ignore[arg-type]
    }


def build_report(
    decisions: pl.DataFrame,
    fills: pl.DataFrame,
    bars: pl.DataFrame,
    costs: Costs,
    starting_cash: float,
    risk_breached: bool = False,
) -> PaperReport:
    """The figures from frames: the decisions (autopilot), the ledger's fills and the bars of the period."""
    decisions = latest_decisions(decisions)
    curve = equity_curve(fills, bars, starting_cash)
    first, last = period(decisions)
    in_period = fills.filter(pl.col("decided_bar").is_between(first, last)) if decisions.height else fills.clear()
    orders = scored_orders(in_period, bars, costs)
    live = order_figures(orders, costs)
    refused_for_risk = bool((decisions["http_status"] == 423).any())
    return PaperReport(
        start=first,
        end=last,
        live=live,
        account=account_figures(curve["equity"].to_numpy(), costs),
        backtest=backtest_figures(decisions, bars, costs),
        slippage=slippage_figures(orders),
        service=service_figures(decisions),
        calibration=calibration_table(orders),
        equity=curve,
        risk_breached=risk_breached or refused_for_risk,
    )


def paper_performance(
    settings: Settings, folder: Path, start: datetime | None = None, end: datetime | None = None
) -> PaperReport:
    """The report of the paper account over [start, end] (default: every bar the autopilot decided on), with its
    equity-curve PNG and markdown written into `folder`."""
    from itff_platform.trading.autopilot import DecisionLog, silver_bars
    from itff_platform.trading.desk import ledger_folder
    from itff_platform.trading.ledger import Ledger

    decisions = DecisionLog(settings).read()
    if start is not None:
        decisions = decisions.filter(pl.col("bar_time") >= start)
    if end is not None:
        decisions = decisions.filter(pl.col("bar_time") <= end)
    book = Ledger(ledger_folder(settings), settings.trading.paper_cash).read()
    symbols = sorted(set(decisions["symbol"].to_list()))
    first, last = period(decisions)
    bar = timedelta(seconds=settings.interval_seconds)  # silver_bars' `after` is exclusive: from the first bar on
    bars = pl.concat(
        [
            silver_bars(settings, s, first - bar, last).select("symbol", "timestamp", "close", "forward_return")
            for s in symbols
        ]
        if decisions.height
        else [
            pl.DataFrame(
                schema={"symbol": pl.String, "timestamp": UTC_TIME, "close": pl.Float64, "forward_return": pl.Float64}
            )
        ]
    )
    # The account's fills up to the period's end, so the equity at its start counts what was held before it.
    fills = book.fills().filter(pl.col("decided_bar") <= last) if decisions.height else book.fills().clear()
    locks = book.events.filter(pl.col("kind") == "lock")
    if decisions.height:
        locks = locks.filter(pl.col("recorded_at") >= decisions["decided_at"].min())
    costs = Costs(
        settings.trading.fees_bps,
        settings.trading.slippage_bps,
        settings.features.label_horizon,
        365 * settings.bars_per_day,
    )
    # The account's own opening cash (its ledger's open event), not today's ITFF_PAPER_CASH.
    report = build_report(decisions, fills, bars, costs, book.starting_cash, risk_breached=locks.height > 0)
    folder.mkdir(parents=True, exist_ok=True)
    if report.equity.height:
        report.figures["equity"] = plot_equity(report, bars, folder / "paper_equity.png")
    (folder / "paper_performance.md").write_text(report.markdown())
    return report


def plot_equity(report: PaperReport, bars: pl.DataFrame, path: Path) -> Path:
    """The account's equity (start = 1) against holding the symbols in equal parts over the same bars."""
    from itff_platform.training.plots import equity_plot

    curve = report.equity
    hold = (
        bars.with_columns(pl.col("close") / pl.col("close").first().over("symbol"))
        .group_by("timestamp")
        .agg(pl.col("close").mean())
        .sort("timestamp")
    )
    joined = curve.join(hold, on="timestamp", how="left").with_columns(pl.col("close").forward_fill().fill_null(1.0))
    equity = joined["equity"].to_numpy()
    return equity_plot(
        joined["timestamp"].to_numpy(),
        equity / equity[0],
        joined["close"].to_numpy(),
        f"Paper account, {report.start:%Y-%m-%d} .. {report.end:%Y-%m-%d}",
        path,
    )
