"""What registration records so a version can vote in /consensus without ever being champion: its SHA-256
manifest (the service loads nothing unverified) and its validation and walk-forward skill over the baselines
(contracts.consensus defines both and reads them back)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from itff_platform.contracts.consensus import SKILL_BASELINE_TAG, SKILL_TAG, VALIDATED_TAG, VALIDATION_TAG
from itff_platform.training.promotion import baselines_on, loss_key, write_manifest

if TYPE_CHECKING:
    from mlflow import MlflowClient


def validation_tags(task: str, metrics: dict[str, float], baselines: dict[str, float | None]) -> dict[str, str]:
    """The version tags of a registered version's validation: its holdout loss against the better baseline's
    on the same rows (`baselines`: family -> its holdout loss). Skill = baseline loss - own loss; validated when
    the skill is >= 0, i.e. it beats or matches the better baseline."""
    key = loss_key(task)
    mine = metrics.get(key)
    known = {f: v for f, v in baselines.items() if v is not None and math.isfinite(v)}
    if mine is None or not math.isfinite(mine):
        return {VALIDATED_TAG: "false", VALIDATION_TAG: f"no walk-forward holdout {key} was recorded"}
    if not known:
        return {VALIDATED_TAG: "false", VALIDATION_TAG: "no baseline was evaluated on its holdout window"}
    best = min(known, key=lambda family: known[family])
    skill = known[best] - mine
    verdict = "beats or matches the better baseline" if skill >= 0 else "worse than the better baseline"
    return {
        VALIDATED_TAG: str(skill >= 0).lower(),
        VALIDATION_TAG: f"holdout {key} {mine:.5f} vs {best} {known[best]:.5f}: skill {skill:+.5f}, {verdict}",
        SKILL_TAG: f"{skill:.6g}",
        SKILL_BASELINE_TAG: best,
    }


def record_for_voting(
    client: MlflowClient, name: str, version: str, task: str, metrics: dict[str, float], window: dict[str, str]
) -> dict[str, str]:
    """Validate a just-registered version against the baselines trained on its holdout window (training runs
    them first), tag the result, and write its manifest. Returns the tags."""
    key = loss_key(task)
    window_pair = (window.get("recent_window_start", ""), window.get("recent_window_end", ""))
    baselines = {
        family: client.get_run(run_id).data.metrics.get(key)
        for family, run_id in baselines_on(client, name, window_pair).items()
    }
    tags = validation_tags(task, metrics, baselines)
    for tag, value in tags.items():
        client.set_model_version_tag(name, version, tag, value)
    write_manifest(client, name, version)
    return tags
