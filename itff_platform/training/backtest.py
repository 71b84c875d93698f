"""A cost-aware backtest of trading the signal: long at P(up) >= threshold, short at P(up) <= 1 - threshold.

Trades are taken every `horizon` bars so holding periods never overlap, and each one pays `fees_bps` per side.
Buy-and-hold over the same bars is the yardstick."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BacktestResult:
    metrics: dict[str, float]
    strategy_equity: np.ndarray
    buy_and_hold_equity: np.ndarray


def allows_short(target: str) -> bool:
    """level_up = 0 also means "neither barrier touched": a low probability is no reason to short."""
    return target == "direction"


def signals(prob: np.ndarray, threshold: float | np.ndarray, allow_short: bool = True) -> np.ndarray:
    """+1 long at P(up) >= threshold, -1 short at P(up) <= 1 - threshold (where shorting makes sense), else 0."""
    return np.where(prob >= threshold, 1, np.where(allow_short & (prob <= 1 - threshold), -1, 0))


def signal_names(prob, threshold: float, target: str) -> np.ndarray:
    """The same rule as `signals`, as the words the service answers with."""
    return np.array(["short", "flat", "long"])[signals(np.asarray(prob), threshold, allows_short(target)) + 1]


def max_drawdown(equity: np.ndarray) -> float:
    peaks = np.maximum.accumulate(np.r_[1.0, equity])[1:]
    return float(np.max(1 - equity / peaks)) if len(equity) else 0.0


def backtest(prob: np.ndarray, forward_return: np.ndarray, threshold: float | np.ndarray, fees_bps: float, horizon: int,
             periods_per_year: float, allow_short: bool = True) -> BacktestResult:
    step = slice(None, None, horizon)
    position, move = signals(prob, threshold, allow_short)[step], forward_return[step]
    cost = 2 * fees_bps / 1e4
    traded = position != 0
    # A short held over the horizon earns 1 - exp(r) in price terms, i.e. log(2 - exp(r)), not -r (which flatters it).
    short = np.log(np.clip(2 - np.exp(move), 1e-6, None))
    net = np.where(position > 0, move - cost, np.where(position < 0, short - cost, 0.0))
    trades = net[traded]
    gains, losses = trades[trades > 0].sum(), -trades[trades < 0].sum()
    spread = net.std()
    strategy_equity = np.exp(np.cumsum(net))
    hold_equity = np.exp(np.cumsum(move) - cost)
    return BacktestResult(
        metrics={
            "trades": int(traded.sum()),
            "hit_rate_trades": float((trades > 0).mean()) if len(trades) else float("nan"),
            "profit_factor": float(gains / losses) if losses > 0 else (float("inf") if gains > 0 else float("nan")),
            "sharpe": float(net.mean() / spread * np.sqrt(periods_per_year)) if spread > 0 else 0.0,
            "max_drawdown": max_drawdown(strategy_equity),
            "strategy_return": float(strategy_equity[-1] - 1) if len(net) else 0.0,
            "buy_and_hold_return": float(hold_equity[-1] - 1) if len(move) else 0.0,
            "buy_and_hold_max_drawdown": max_drawdown(hold_equity),
        },
        strategy_equity=strategy_equity,
        buy_and_hold_equity=hold_equity,
    )
