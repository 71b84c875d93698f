"""The consensus answer (runbook 004's `/api/ai/consensus`): which registered versions vote, with what weight,
what their votes add up to, and whether a trade is allowed. The service computes it per request and the
paper-trading autopilot reads it, so the fields, the voting rule and the gate live here, below both.

Who votes: each family's latest registered version (one not rolled back) that passed validation at
registration, and whose files carry the SHA-256 manifest written then. "Passed validation" is recorded by
training (training.voting) as the version tags below: the walk-forward evaluation completed, its walk-forward
ECE was within ITFF_MAX_ECE (or it would not have been registered), and on the holdout fold (the last
walk-forward fold, which the hyperparameter search never scored) its loss is no worse than the better
baseline's on the same rows. Its weight is that improvement, the skill; a voter without positive skill weighs 0."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from itff_platform.contracts.signals import served_signals
from itff_platform.manifests import DIGEST_TAG

ENSEMBLE_PREFIX = "ensemble-"
# Version tags training writes at registration (training.voting).
SKILL_TAG = "wf_skill"  # holdout loss of the better baseline minus the version's: > 0 is skill
SKILL_BASELINE_TAG = "wf_skill_baseline"  # which baseline that was
VALIDATED_TAG = "validated"  # "true" or "false"
VALIDATION_TAG = "validation_reason"
NO_SKILL = "no voting family has positive walk-forward skill over the baselines: no trade"


def is_ensemble(model_version: str | None) -> bool:
    """A prediction log's model_version that names a /consensus ensemble, not a registry version."""
    return str(model_version).startswith(ENSEMBLE_PREFIX)


def ensemble_id(members: Sequence[tuple[str, str, float]]) -> str:
    """One id for the set of (family, version) that voted: the same voters give the same id, so an answer, a
    logged prediction and an order can all name the ensemble that made it. `members`: (family, version, weight);
    a member of weight 0 is asked but does not vote, so it does not change the id (a retrained no-skill family
    must not make the same decision look like another ensemble's)."""
    voters = sorted((family, version) for family, version, weight in members if weight > 0)
    key = ",".join(f"{family}:{version}" for family, version in voters)
    return ENSEMBLE_PREFIX + hashlib.sha256(key.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Standing:
    """What the registry says about one version's vote: its skill, and why it may not vote (None: it may)."""

    skill: float | None
    baseline: str | None
    refusal: str | None


def standing(tags: Mapping[str, str]) -> Standing:
    """A version's right to vote, from its registry tags (see the module docstring). Versions registered before
    training recorded validation vote only if promotion made them champion, with the skill promotion measured."""
    if DIGEST_TAG not in tags:
        return Standing(None, None, "has no SHA-256 manifest (registered before registration wrote one): not loaded")
    if tags.get(VALIDATED_TAG) == "true":
        return Standing(_number(tags.get(SKILL_TAG)), tags.get(SKILL_BASELINE_TAG), None)
    if VALIDATED_TAG in tags:
        return Standing(None, None, f"failed validation: {tags.get(VALIDATION_TAG, 'no reason recorded')}")
    if tags.get("promotion_decision") == "promoted":
        baseline, mine = (
            _number(tags.get("promotion_baseline_holdout_loss")),
            _number(tags.get("promotion_holdout_loss")),
        )
        skill = baseline - mine if baseline is not None and mine is not None else None
        return Standing(skill, tags.get("promotion_compared_with"), None)
    return Standing(None, None, "no validation recorded (registered before training recorded one): retrain it")


def _number(text: str | None) -> float | None:
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def member_weights(skills: Sequence[float | None]) -> list[float]:
    """Each voter's share of the vote: its skill over the total, where no skill (unknown, zero or negative)
    counts 0. All zeros when no voter has positive skill."""
    raw = [max(s, 0.0) if s is not None else 0.0 for s in skills]
    total = sum(raw)
    return [w / total for w in raw] if total > 0 else [0.0] * len(raw)


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
    max(P(long), P(short)) reaches the confidence threshold; `reason` says why not. Without any weight (no
    voter, or none with skill) the answer is even odds, flat, and not allowed."""
    weighted = sum(weights) > 0
    prob_long = float(np.average(probs, weights=weights)) if weighted else 0.5
    signals, rule_allows = served_signals(prob_long, decision_threshold, target, tradable)
    signal = str(signals) if weighted else "flat"
    confidence = max(prob_long, 1.0 - prob_long)
    if not weighted:
        reason: str | None = NO_SKILL
    elif not tradable:
        reason = "the champion's rule is not tradable: its signal is served flat"
    elif signal == "flat" or not rule_allows:
        reason = f"P(long) {prob_long:.4f} is inside the decision threshold {decision_threshold:g}: flat"
    elif confidence < confidence_threshold:
        reason = f"confidence {confidence:.4f} is below {confidence_threshold:g} (ITFF_CONFIDENCE_THRESHOLD)"
    else:
        reason = None
    return {
        "prob_up": prob_long,
        "prob_long": prob_long,
        "prob_short": 1.0 - prob_long,
        "confidence": confidence,
        "signal": signal,
        "decision_threshold": decision_threshold,
        "threshold": confidence_threshold,
        "allow": reason is None,
        "reason": reason,
    }
