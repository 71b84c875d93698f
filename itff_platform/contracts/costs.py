"""What a trade costs: one rule for the backtest that judges a signal and the paper broker that trades it.

A fill pays `fees_bps` of its notional per side, and `slippage_bps` moves its price against the order. The
backtest's round trip is two sides at the decision bar's close (its log returns are close to close); the paper
broker's side is one fill at the next bar's open, which is the same price on a gapless market."""

from __future__ import annotations

BPS = 1e-4


def side_cost(fees_bps: float, slippage_bps: float = 0.0) -> float:
    """The fraction of a fill's notional that one side costs (fees plus slippage)."""
    return (fees_bps + slippage_bps) * BPS


def round_trip_cost(fees_bps: float, slippage_bps: float = 0.0) -> float:
    """What entering and leaving a position costs, as a log-return deduction (the backtest's per-trade cost)."""
    return 2 * side_cost(fees_bps, slippage_bps)


def fill_price(reference: float, direction: int, slippage_bps: float) -> float:
    """The price a buy (direction +1) or a sell (-1) fills at: the reference moved against it by the slippage."""
    return reference * (1 + direction * slippage_bps * BPS)


def fee(notional_usd: float, fees_bps: float) -> float:
    """The fee on a fill of `notional_usd` (always positive, whichever the side)."""
    return abs(notional_usd) * fees_bps * BPS
