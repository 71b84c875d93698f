"""The consensus rule (contracts.consensus) and the validation training records for it (training.voting):
plain functions, checked without a service."""

import pytest

from itff_platform.contracts.consensus import NO_SKILL, consensus_fields, ensemble_id, member_weights, standing
from itff_platform.training.voting import validation_tags


def test_weights_follow_skill_and_no_skill_weighs_nothing():
    assert member_weights([0.03, 0.01, -0.02, None]) == pytest.approx([0.75, 0.25, 0.0, 0.0])
    assert member_weights([0.0, -0.1]) == [0.0, 0.0] and member_weights([]) == []


def test_without_any_skilled_voter_the_answer_is_flat_even_odds_and_says_why():
    for probs, weights in (([0.9, 0.8], [0.0, 0.0]), ([], [])):
        vote = consensus_fields(probs, weights, 0.55, 0.6, "direction", tradable=True)
        assert (vote["prob_long"], vote["signal"], vote["allow"], vote["reason"]) == (0.5, "flat", False, NO_SKILL)


def test_the_ensemble_id_names_the_voters_only():
    """A member of weight 0 is asked but does not vote: retraining it must not change the id of the ensemble."""
    voters = [("logistic", "3", 0.75), ("lightgbm", "2", 0.25)]
    same = ensemble_id([*voters, ("mlp", "1", 0.0)])
    assert same == ensemble_id(voters) == ensemble_id([*voters, ("mlp", "2", 0.0)])
    assert ensemble_id([("logistic", "4", 0.75), ("lightgbm", "2", 0.25)]) != same


def test_allow_needs_a_trading_signal_and_the_confidence_threshold():
    sure = consensus_fields([0.7], [1.0], 0.55, 0.6, "direction", tradable=True)
    assert sure["signal"] == "long" and sure["allow"] and sure["reason"] is None
    # Long under the rule (0.57 >= 0.55), but below ITFF_CONFIDENCE_THRESHOLD: not allowed.
    unsure = consensus_fields([0.57], [1.0], 0.55, 0.6, "direction", tradable=True)
    assert unsure["signal"] == "long" and not unsure["allow"] and "ITFF_CONFIDENCE_THRESHOLD" in unsure["reason"]
    untradable = consensus_fields([0.9], [1.0], 0.55, 0.6, "direction", tradable=False)
    assert untradable["signal"] == "flat" and not untradable["allow"] and "not tradable" in untradable["reason"]


def test_a_version_votes_only_with_a_manifest_and_a_passed_validation():
    manifest = {"manifest_sha256": "0" * 64}
    assert standing({"validated": "true", "wf_skill": "0.01"}).refusal.startswith("has no SHA-256 manifest")
    passed = standing(manifest | {"validated": "true", "wf_skill": "0.012", "wf_skill_baseline": "baseline_majority"})
    assert (passed.skill, passed.baseline, passed.refusal) == (0.012, "baseline_majority", None)
    failed = standing(manifest | {"validated": "false", "validation_reason": "worse than the better baseline"})
    assert failed.refusal == "failed validation: worse than the better baseline"
    # Registered before validation was recorded: a past champion votes with the skill promotion measured.
    legacy = standing(
        manifest
        | {
            "promotion_decision": "promoted",
            "promotion_holdout_loss": "0.60",
            "promotion_baseline_holdout_loss": "0.69",
        }
    )
    assert legacy.refusal is None and legacy.skill == pytest.approx(0.09)
    assert standing(manifest).refusal.startswith("no validation recorded")


def test_validation_is_beating_or_matching_the_better_baseline_on_the_holdout():
    better = validation_tags("classification", {"recent_log_loss": 0.65}, {"a": 0.69, "b": 0.68, "c": None})
    assert better["validated"] == "true" and float(better["wf_skill"]) == pytest.approx(0.03)
    assert better["wf_skill_baseline"] == "b"
    worse = validation_tags("classification", {"recent_log_loss": 0.70}, {"a": 0.69})
    assert worse["validated"] == "false" and "worse than the better baseline" in worse["validation_reason"]
    alone = validation_tags("classification", {"recent_log_loss": 0.60}, {})
    assert alone["validated"] == "false" and "no baseline" in alone["validation_reason"]
