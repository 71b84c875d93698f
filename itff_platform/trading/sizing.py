"""How big an order is: scaled by its confidence and by a volatility target, then clipped at the symbol's cap."""

from __future__ import annotations

from dataclasses import dataclass

SIDES = {"buy": 1, "sell": -1}


@dataclass(frozen=True)
class Size:
    requested_usd: float
    sized_usd: float  # after confidence and volatility scaling
    final_usd: float  # after the cap: what is traded
    vol_scale: float
    annualised_vol: float | None

    @property
    def clipped_usd(self) -> float:
        """What the per-symbol cap took off the sized order."""
        return self.sized_usd - self.final_usd


def vol_scale(annualised_vol: float | None, target_ann_vol: float) -> float:
    """min(1, target / realized): a calm market trades the whole order, a wild one a share of it. Unknown
    volatility (no lake) is not a reason to trade more: the order is taken at face value, scale 1."""
    if annualised_vol is None or annualised_vol <= 0:
        return 1.0
    return min(1.0, target_ann_vol / annualised_vol)


def room_under_cap(position_usd: float, direction: int, cap_usd: float) -> float:
    """The most a buy (+1) or sell (-1) can add before |exposure| passes the cap. A sell that reduces a long has
    room for the long and a short of the cap after it."""
    return max(0.0, cap_usd - direction * position_usd)


def size_order(
    requested_usd: float,
    confidence: float,
    direction: int,
    position_usd: float,
    cap_usd: float,
    annualised_vol: float | None,
    target_ann_vol: float,
) -> Size:
    scale = vol_scale(annualised_vol, target_ann_vol)
    sized = requested_usd * confidence * scale
    final = min(sized, room_under_cap(position_usd, direction, cap_usd))
    return Size(requested_usd, sized, final, scale, annualised_vol)
