"""A cost-aware backtest of trading the signal: long at P(up) >= threshold, short at P(up) <= 1 - threshold.

Trades are taken every `horizon` bars so holding periods never overlap, and each one pays `fees_bps` per side.
Buy-and-hold over the same bars is the yardstick."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from itff_platform.contracts.costs import round_trip_cost

# answer_columns and served_signals are re-exported: registered pyfunc models are saved from code, and versions logged
# before the signal rule moved to contracts/ import them from here, so rolling back to such a version still loads.
from itff_platform.contracts.signals import answer_columns, served_signals, signals  # noqa: F401


@dataclass(frozen=True)
class BacktestResult:
    metrics: dict[str, float]
    strategy_equity: np.ndarray
    buy_and_hold_equity: np.ndarray
    net_returns: np.ndarray | None = None  # per decision bar (every `horizon` bars): log return after fees, 0 when flat
    positions: np.ndarray | None = None  # per decision bar: +1 long, -1 short, 0 flat


def max_drawdown(equity: np.ndarray) -> float:
    peaks = np.maximum.accumulate(np.r_[1.0, equity])[1:]
    return float(np.max(1 - equity / peaks)) if len(equity) else 0.0


def trading_metrics(net: np.ndarray, traded: np.ndarray, periods_per_year: float) -> dict[str, float]:
    """Trades, hit rate, profit factor, Sharpe and drawdown of a series of per-decision net log returns (0 when
    flat): for the whole backtest, or one fold's or one regime's share of it."""
    trades = net[traded]
    gains, losses = trades[trades > 0].sum(), -trades[trades < 0].sum()
    spread = net.std() if len(net) else 0.0
    equity = np.exp(np.cumsum(net))
    return {
        "trades": int(traded.sum()),
        "hit_rate_trades": float((trades > 0).mean()) if len(trades) else float("nan"),
        "profit_factor": float(gains / losses) if losses > 0 else (float("inf") if gains > 0 else float("nan")),
        "sharpe": float(net.mean() / spread * np.sqrt(periods_per_year)) if spread > 0 else 0.0,
        "max_drawdown": max_drawdown(equity),
        "strategy_return": float(equity[-1] - 1) if len(net) else 0.0,
    }


def backtest(
    prob: np.ndarray,
    forward_return: np.ndarray,
    threshold: float | np.ndarray,
    fees_bps: float,
    horizon: int,
    periods_per_year: float,
    allow_short: bool = True,
) -> BacktestResult:
    """Trade the rule every `horizon` bars. A NaN threshold means "no rule yet" (nothing to learn it from): flat."""
    step = slice(None, None, horizon)
    position, move = signals(prob, threshold, allow_short)[step], forward_return[step]
    cost = round_trip_cost(fees_bps)  # the paper broker's fee rule, both sides
    # A short held over the horizon earns 1 - exp(r) in price terms, i.e. log(2 - exp(r)), not -r (which flatters it).
    short = np.log(np.clip(2 - np.exp(move), 1e-6, None))
    net = np.where(position > 0, move - cost, np.where(position < 0, short - cost, 0.0))
    hold_equity = np.exp(np.cumsum(move) - cost)
    return BacktestResult(
        metrics={
            **trading_metrics(net, position != 0, periods_per_year),
            "buy_and_hold_return": float(hold_equity[-1] - 1) if len(move) else 0.0,
            "buy_and_hold_max_drawdown": max_drawdown(hold_equity),
        },
        strategy_equity=np.exp(np.cumsum(net)),
        buy_and_hold_equity=hold_equity,
        net_returns=net,
        positions=position,
    )


def combine_backtests(parts: list[BacktestResult], periods_per_year: float) -> BacktestResult:
    """Backtests of consecutive periods (walk-forward folds) as one: their decisions end to end."""
    net = np.concatenate([part.net_returns for part in parts])
    positions = np.concatenate([part.positions for part in parts])
    hold = np.concatenate([np.diff(np.log(np.r_[1.0, part.buy_and_hold_equity])) for part in parts])
    hold_equity = np.exp(np.cumsum(hold))
    return BacktestResult(
        metrics={
            **trading_metrics(net, positions != 0, periods_per_year),
            "buy_and_hold_return": float(hold_equity[-1] - 1) if len(hold) else 0.0,
            "buy_and_hold_max_drawdown": max_drawdown(hold_equity),
        },
        strategy_equity=np.exp(np.cumsum(net)),
        buy_and_hold_equity=hold_equity,
        net_returns=net,
        positions=positions,
    )
