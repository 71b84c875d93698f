"""The consensus answer (runbook 004's `/api/ai/consensus`): what the families' votes add up to, and whether a
trade is allowed. The service computes it per request and the paper-trading autopilot reads it, so the fields
and the gate live here, below both."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from itff_platform.contracts.signals import served_signals

ENSEMBLE_PREFIX = "ensemble-"


def ensemble_id(members: Sequence[tuple[str, str]]) -> str:
    """One id for the set of (family, version) that voted: the same members give the same id, so an answer, a
    logged prediction and an order can all name the ensemble that made it."""
    key = ",".join(f"{family}:{version}" for family, version in sorted(members))
    return ENSEMBLE_PREFIX + hashlib.sha256(key.encode()).hexdigest()[:12]


def consensus_fields(
    probs: Sequence[float],
    weights: Sequence[float],
    decision_threshold: float,
    confidence_threshold: float,
    target: str,
    tradable: bool,
) -> dict[str, Any]:
    """The weighted P(long), its signal under the deployed rule (the decision threshold, flat when the rule is
    not tradable), and the runbook's gate: `allow` only when the signal trades and the confidence
    max(P(long), P(short)) reaches the confidence threshold."""
    prob_long = float(np.average(probs, weights=weights))
    signal, rule_allows = served_signals(prob_long, decision_threshold, target, tradable)
    confidence = max(prob_long, 1.0 - prob_long)
    return {
        "prob_up": prob_long,
        "prob_long": prob_long,
        "prob_short": 1.0 - prob_long,
        "confidence": confidence,
        "signal": str(signal),
        "decision_threshold": decision_threshold,
        "threshold": confidence_threshold,
        "allow": bool(rule_allows) and str(signal) != "flat" and confidence >= confidence_threshold,
    }
