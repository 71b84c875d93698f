"""The broker seam: where an order is filled. The paper broker is the one implementation; a live adapter (an
exchange's API, with its keys) would be a second, switched on only after the 30-day paper validation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from itff_platform.contracts.costs import fee, fill_price


@dataclass(frozen=True)
class Fill:
    price: float  # per unit, after slippage
    quantity: float  # units, signed: + bought, - sold
    notional_usd: float  # signed like quantity
    fee_usd: float
    slippage_bps: float


class Broker(Protocol):
    mode: str

    def fill(self, symbol: str, direction: int, usd: float, reference_price: float) -> Fill: ...


class PaperBroker:
    """Fills every order in full at the reference price moved by the slippage, paying the backtest's fee."""

    mode = "paper"

    def __init__(self, fees_bps: float, slippage_bps: float) -> None:
        self.fees_bps, self.slippage_bps = fees_bps, slippage_bps

    def fill(self, symbol: str, direction: int, usd: float, reference_price: float) -> Fill:
        price = fill_price(reference_price, direction, self.slippage_bps)
        return Fill(price, direction * usd / price, direction * usd, fee(usd, self.fees_bps), self.slippage_bps)


class LiveBrokerMissing(RuntimeError):
    """No live adapter ships: `live` is refused, clearly, before anything is recorded."""


def broker_for(mode: str, fees_bps: float, slippage_bps: float) -> Broker:
    if mode == "paper":
        return PaperBroker(fees_bps, slippage_bps)
    raise LiveBrokerMissing(
        f"mode: {mode!r:.20} is refused: no live broker adapter ships (the Broker protocol in "
        "itff_platform/trading/broker.py is the seam); orders are paper until one is written and validated"
    )
