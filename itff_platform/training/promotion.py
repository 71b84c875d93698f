"""Champion/challenger promotion in the MLflow registry, rollback, and SHA-256 manifests of model artifacts.

Two decisions, kept apart:
- *Serve.* A version becomes its symbol x target's champion when its probabilistic skill beats the better
  baseline with 95 % confidence on the holdout window (a one-sided Diebold-Mariano test on per-row losses,
  HAC variance), and, when a champion exists, either beats the champion just as significantly or the champion
  has lost its own significant edge over the baselines on that window. A bare difference decides nothing.
- *Trade.* Whether the served version's threshold rule is worth trading was decided at training time, on the
  rule's walk-forward trades after fees (training.evaluation.tradability). It travels with the model as
  `tradable`; a champion that is not tradable is served with signal `flat` and the reason.

The challenger is chosen among the versions one training run registered (one per family): the family with the
lowest loss over the searched folds leads, every family the leader does not beat significantly is within noise
of it, and of those the simplest family wins (lowest `complexity`, then the lower ECE). The holdout window is
kept out of that choice, so the serve test on it is not biased by picking the family that got lucky there."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import polars as pl
from mlflow.entities.model_registry import ModelVersion

if TYPE_CHECKING:
    from itff_platform.training.significance import LossComparison

import mlflow
from itff_platform.manifests import DIGEST_TAG, artifact_manifest, manifest_artifact, manifest_digest
from itff_platform.models.registry import baselines
from itff_platform.rules import registered_name, task_of
from itff_platform.settings import Settings
from itff_platform.training.metrics import row_losses
from itff_platform.training.model_lock import model_lock
from itff_platform.training.tracking import quiet_mlflow
from mlflow import MlflowClient

CHAMPION = "champion"
HISTORY_TAG = "champion_history"
LAST_DECISION_TAG = "last_promotion_decision"
OOS_ARTIFACT = "evaluation/oos_predictions.parquet"


@dataclass(frozen=True)
class Candidate:
    version: str
    run_id: str
    family: str
    metrics: dict[str, float]
    tags: dict[str, str]
    complexity: int = 9

    @property
    def window(self) -> tuple[str, str]:
        return self.tags.get("recent_window_start", ""), self.tags.get("recent_window_end", "")


@dataclass
class Decision:
    name: str
    promoted: bool
    challenger: str | None
    champion_before: str | None
    compared_with: str
    reasons: list[str] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)
    tradable: bool | None = None
    unchanged: bool = False  # nothing new to judge since the last decision: the champion is kept, nothing recorded

    @property
    def champion_after(self) -> str | None:
        return self.challenger if self.promoted else self.champion_before


def _candidate(client: MlflowClient, version: ModelVersion) -> Candidate:
    assert version.run_id is not None  # registered from a study run
    run = client.get_run(version.run_id)
    return Candidate(
        str(version.version),
        version.run_id,
        version.tags.get("family", "?"),
        run.data.metrics,
        run.data.tags,
        int(version.tags.get("complexity", 9)),
    )


def loss_key(task: str) -> str:
    return "recent_pinball_loss" if task == "regression" else "recent_log_loss"


class OutOfSample:
    """Per-row out-of-sample predictions of study runs (their `oos_predictions.parquet`), read once each,
    with per-row losses: what every comparison below is made on."""

    def __init__(self, client: MlflowClient, task: str) -> None:
        self.client, self.task = client, task
        self._frames: dict[str, pl.DataFrame | None] = {}

    def frame(self, run_id: str) -> pl.DataFrame | None:
        if run_id not in self._frames:
            try:
                with tempfile.TemporaryDirectory() as scratch:
                    frame = pl.read_parquet(self.client.download_artifacts(run_id, OOS_ARTIFACT, scratch))
            except Exception:  # a run from before per-row predictions were kept
                self._frames[run_id] = None
                return None
            self._frames[run_id] = with_losses(frame, self.task)
        return self._frames[run_id]

    def losses(self, run_id: str, holdout: bool) -> pl.DataFrame | None:
        frame = self.frame(run_id)
        return None if frame is None else frame.filter(pl.col("holdout") == holdout).select("timestamp", "loss")


def with_losses(frame: pl.DataFrame, task: str) -> pl.DataFrame:
    prediction = frame.select("p10", "p50", "p90").to_numpy() if task == "regression" else frame["prob_up"].to_numpy()
    return frame.with_columns(loss=row_losses(task, frame["label"].to_numpy().astype(np.float64), prediction))


def compare(candidate: pl.DataFrame, reference: pl.DataFrame, horizon: int) -> LossComparison:
    """Diebold-Mariano on the rows both were scored on (joined on the bar's time)."""
    from itff_platform.training.significance import diebold_mariano

    both = candidate.join(reference, on="timestamp", suffix="_reference").sort("timestamp")
    return diebold_mariano(both["loss"].to_numpy(), both["loss_reference"].to_numpy(), horizon)


def choose_challenger(
    pool: list[Candidate], oos: OutOfSample, settings: Settings
) -> tuple[Candidate | None, list[str]]:
    """The simplest family within noise of the best one on the searched folds (see the module docstring)."""
    notes, scored = [], []
    for candidate in pool:
        ece = candidate.metrics.get("ece")
        if ece is not None and ece > settings.promotion.max_ece:
            notes.append(
                f"{candidate.family} v{candidate.version} refused: walk-forward ECE {ece:.4f} > {settings.promotion.max_ece}"
            )
            continue
        losses = oos.losses(candidate.run_id, holdout=False)
        if losses is None or losses.is_empty():
            notes.append(
                f"{candidate.family} v{candidate.version} skipped: no per-row out-of-sample predictions logged"
            )
            continue
        scored.append((candidate, losses))
    if not scored:
        return None, notes
    leader, leader_losses = min(scored, key=lambda pair: cast(float, pair[1]["loss"].mean()))
    within = [(leader, 1.0)]
    for candidate, losses in scored:
        if candidate is not leader:
            p_value = compare(
                leader_losses, losses, settings.features.label_horizon
            ).p_value  # is the leader really better?
            if p_value >= settings.promotion.alpha:
                within.append((candidate, p_value))
    chosen = min((c for c, _ in within), key=lambda c: (c.complexity, c.metrics.get("ece", 1.0), c.version))
    noise = ", ".join(f"{c.family} (p={p:.2f})" for c, p in within if c is not leader) or "none"
    notes.append(
        f"challenger {chosen.family} v{chosen.version}: {leader.family} had the lowest loss on the searched folds "
        f"({cast(float, leader_losses['loss'].mean()):.5f}); within noise of it: {noise}; the simplest of those is chosen"
    )
    return chosen, notes


def skill_reason(name: str, test: LossComparison, reference: str, alpha: float) -> str:
    verdict = "significantly beats" if test.significant(alpha) else "does not significantly beat"
    return (
        f"{name} {verdict} {reference} on the holdout: mean loss gain {test.mean_gain:+.5f} over {test.rows} rows, "
        f"Diebold-Mariano p={test.p_value:.4f} (alpha {alpha})"
    )


def _champion_holdout_losses(
    client: MlflowClient,
    oos: OutOfSample,
    settings: Settings,
    symbol: str,
    target: str,
    name: str,
    holder: Candidate,
    challenger: Candidate,
) -> tuple[pl.DataFrame | None, str | None]:
    """The champion's per-row losses on the challenger's holdout window, or why they cannot be had."""
    if holder.window == challenger.window:
        losses = oos.losses(holder.run_id, holdout=True)
        if losses is None:
            return None, f"champion v{holder.version}'s run kept no out-of-sample rows on this window: kept as it is"
        return losses, None
    if not _trained_before(holder, challenger.window[0], settings):
        return None, (
            f"not comparable: champion v{holder.version} was trained through {holder.tags.get('trained_through')}, "
            f"inside the challenger's window {challenger.window[0]}..{challenger.window[1]}"
        )
    scored = _score_on_window(settings, symbol, target, f"models:/{name}/{holder.version}", challenger.window)
    return (
        (scored, None)
        if scored is not None and scored.height
        else (None, "the champion could not be scored on the window")
    )


def promote_champion(settings: Settings, symbol: str, target: str) -> Decision:
    """Judge the newest versions against the champion and move the alias on evidence, holding the model's lock
    (training.model_lock): a concurrent promotion, force or rollback of the same model waits, then sees this one's."""
    with model_lock(settings, registered_name(symbol, target)):
        return _promote(settings, symbol, target)


def _promote(settings: Settings, symbol: str, target: str) -> Decision:
    quiet_mlflow()
    mlflow.set_tracking_uri(settings.tracking_uri)
    client = MlflowClient(settings.tracking_uri)
    name = registered_name(symbol, target)
    task = task_of(target)
    versions = client.search_model_versions(f"name = '{name}'")
    if not versions:
        raise LookupError(f"{name}: no registered versions; materialize trained_models first")
    champion = _current_champion(client, name)
    # A version rolled back from is not a challenger again until someone retrains.
    newer = [
        v
        for v in versions
        if (champion is None or int(v.version) > int(champion.version)) and "rolled_back_at" not in v.tags
    ]
    if not newer and champion is None:  # the alias was removed by hand after rollbacks: nothing to judge
        reason = "no champion, and every registered version was rolled back from: retrain to get one"
        return Decision(name, False, None, None, "-", [reason], unchanged=True, tradable=False)
    if not newer:
        assert champion is not None  # the case above
        return Decision(
            name,
            False,
            None,
            str(champion.version),
            "-",
            ["no version newer than the champion"],
            unchanged=True,
            tradable=champion.tags.get("tradable") == "true",
        )
    basis = decision_basis(settings)
    judged = _judged_before(client, name, newer, champion, basis)
    if judged is not None:
        return judged
    candidates = [c for c in (_candidate(client, v) for v in newer) if all(c.window) and loss_key(task) in c.metrics]
    if not candidates:
        return Decision(
            name,
            False,
            None,
            str(champion.version) if champion else None,
            "-",
            ["no newer version carries holdout metrics to compare"],
        )
    # Losses are comparable only on one window: the newest training run's.
    newest_window = max(c.window for c in candidates)
    oos = OutOfSample(client, task)
    challenger, notes = choose_challenger([c for c in candidates if c.window == newest_window], oos, settings)
    before = str(champion.version) if champion else None
    if challenger is None:
        return Decision(name, False, None, before, "-", notes or ["no eligible challenger"])
    decision = _serve_decision(client, oos, settings, symbol, target, name, challenger, champion, notes)
    tradable = challenger.tags.get("tradable") == "true"
    decision.reasons.append(
        f"trading: v{challenger.version} {'is tradable' if tradable else 'is not tradable (it would be served flat)'}: "
        f"{challenger.tags.get('tradable_reason', 'no trade decision recorded')}"
    )
    if decision.promoted:
        _set_champion(client, name, challenger.version)
    # Whether what is served after this decision trades: the new champion's rule, or the kept one's.
    decision.tradable = (
        tradable if decision.promoted else (champion.tags.get("tradable") == "true" if champion else None)
    )
    return _record(client, decision, basis)


def decision_basis(settings: Settings) -> str:
    """What a serve decision depends on besides the versions: the settings promotion reads and its own code."""
    from itff_platform.fingerprints import SHARED_MODULES, code_digest, digest

    read = {
        "promotion_alpha": settings.promotion.alpha,
        "label_horizon": settings.features.label_horizon,
        "max_ece": settings.promotion.max_ece,
        "interval": settings.interval,
    }
    return digest(read, code_digest("training/promotion.py", "training/significance.py", *SHARED_MODULES))


def _judged_before(
    client: MlflowClient, name: str, newer: list[ModelVersion], champion: ModelVersion | None, basis: str
) -> Decision | None:
    """The decision to keep things as they are when the last recorded decision already saw every version there is,
    on the same settings and code (`basis`), and left the champion that is still in place: judging again would decide
    the same. A retrain (a new version), a rollback, a forced champion, a changed ITFF_PROMOTION_ALPHA or changed
    promotion code changes that, and the versions are judged again."""
    last = json.loads(client.get_registered_model(name).tags.get(LAST_DECISION_TAG, "{}"))
    current = str(champion.version) if champion else None
    if (
        not last
        or last["champion_after"] != current
        or last.get("basis") != basis
        or last["latest_version"] < max(int(v.version) for v in newer)
    ):
        return None
    try:
        tags = client.get_model_version(name, last["version"]).tags
    except mlflow.exceptions.MlflowException:  # that version was deleted since
        return None
    reasons = [
        f"nothing new to judge: the last decision (v{last['version']} {tags.get('promotion_decision', '?')} on "
        f"{tags.get('promotion_decided_at', '?')}) saw every version up to v{last['latest_version']} and left "
        f"{f'champion v{current}' if champion else 'no champion'}; its reasons:",
        *tags.get("promotion_reasons", "").split(" | "),
    ]
    return Decision(
        name,
        False,
        None,
        current,
        tags.get("promotion_compared_with", "-"),
        reasons,
        unchanged=True,
        tradable=None if champion is None else champion.tags.get("tradable") == "true",
    )


def _serve_decision(
    client: MlflowClient,
    oos: OutOfSample,
    settings: Settings,
    symbol: str,
    target: str,
    name: str,
    challenger: Candidate,
    champion: ModelVersion | None,
    notes: list[str],
) -> Decision:
    alpha, horizon = settings.promotion.alpha, settings.features.label_horizon
    before = str(champion.version) if champion else None
    mine = oos.losses(challenger.run_id, holdout=True)
    # choose_challenger scored the challenger on this same (cached) frame: it has out-of-sample rows.
    assert mine is not None
    found_losses = {
        family: oos.losses(run_id, holdout=True)
        for family, run_id in baselines_on(client, name, challenger.window).items()
    }
    baseline_losses = {family: losses for family, losses in found_losses.items() if losses is not None}
    if not baseline_losses:
        return Decision(
            name,
            False,
            challenger.version,
            before,
            "baselines",
            [*notes, "no baseline run on the same window to compare with"],
        )
    best_name, best = min(baseline_losses.items(), key=lambda kv: cast(float, kv[1]["loss"].mean()))
    skill = compare(mine, best, horizon)
    reasons = [
        *notes,
        skill_reason(f"{challenger.family} v{challenger.version}", skill, f"the better baseline {best_name}", alpha),
    ]
    figures = {
        "p_value_vs_baseline": skill.p_value,
        "holdout_loss": float(cast(float, mine["loss"].mean())),
        "baseline_holdout_loss": float(cast(float, best["loss"].mean())),
    }
    if champion is None:
        decision = Decision(name, skill.significant(alpha), challenger.version, None, best_name, reasons, figures)
        return decision
    holder = _candidate(client, champion)
    theirs, refusal = _champion_holdout_losses(client, oos, settings, symbol, target, name, holder, challenger)
    if theirs is None:
        assert refusal is not None  # _champion_holdout_losses gives a reason whenever it gives no losses
        return Decision(name, False, challenger.version, before, f"v{before}", [*reasons, refusal], figures)
    versus = compare(mine, theirs, horizon)
    champion_skill = compare(theirs, best, horizon)
    reasons += [
        skill_reason(f"{challenger.family} v{challenger.version}", versus, f"champion v{before}", alpha),
        skill_reason(f"champion v{before}", champion_skill, f"the better baseline {best_name}", alpha),
    ]
    figures.update({"p_value_vs_champion": versus.p_value, "champion_p_value_vs_baseline": champion_skill.p_value})
    # Replace a champion only on evidence: the challenger is significantly better than it, or the champion has
    # lost its significant edge over the baselines while the challenger has one.
    promoted = skill.significant(alpha) and (versus.significant(alpha) or not champion_skill.significant(alpha))
    return Decision(name, promoted, challenger.version, before, f"v{before}", reasons, figures)


def _score_on_window(
    settings: Settings, symbol: str, target: str, model_uri: str, window: tuple[str, str]
) -> pl.DataFrame | None:
    """Per-row losses of a (champion) model on the challenger's holdout window, from the lake's silver rows,
    through its pyfunc: exactly what the service would have answered there."""
    import pandas as pd

    from itff_platform.training.dataset import training_data

    data = training_data(settings, symbol, target)
    start, end = (np.datetime64(w) for w in window)
    rows = np.flatnonzero((data.timestamps >= start) & (data.timestamps <= end))
    if len(rows) == 0:
        return None
    # Into a scratch folder: loading "models:/..." without dst_path writes into the registry's own artifact folder.
    with tempfile.TemporaryDirectory() as scratch:
        local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=scratch))
        model = mlflow.pyfunc.load_model(str(local))
        context = int(json.loads((local / "artifacts" / "forecaster" / "meta.json").read_text()).get("context_rows", 0))
        # Hand sequence models the history before the window, then keep only the window's own predictions.
        first = max(0, rows[0] - context)
        frame = pd.DataFrame(data.x[first : rows[-1] + 1], columns=data.features).assign(
            regime=data.regimes[first : rows[-1] + 1].astype(str)
        )
        out = model.predict(frame).iloc[rows[0] - first :]
    window_rows = slice(rows[0], rows[-1] + 1)
    prediction = out[["p10", "p50", "p90"]].to_numpy() if data.task == "regression" else out["prob_up"].to_numpy()
    losses = row_losses(data.task, data.y[window_rows].astype(np.float64), prediction)
    return pl.DataFrame({"timestamp": data.timestamps[window_rows], "loss": losses})


def _trained_before(holder: Candidate, window_start: str, settings: Settings) -> bool:
    """True when the holder's last training label was known before the window opened, so the window is out of
    sample for it: its last training bar plus the label horizon (and that bar itself) precede the window."""

    last = holder.tags.get("trained_through")
    if not last:
        return False
    known = datetime.fromisoformat(last) + timedelta(
        seconds=(settings.features.label_horizon + 1) * settings.interval_seconds
    )
    return known <= datetime.fromisoformat(window_start)


def force_champion(settings: Settings, symbol: str, target: str, version: str) -> Decision:
    """Make `version` the champion without the promotion test, as `itff promote --force VERSION` does: the manifest
    is written and the alias moved exactly as for a promotion (_set_champion), and the decision is recorded as forced
    (tag promotion_decision=forced), so the registry shows that no test backed it. Rollback undoes it as usual.
    Holds the model's lock, as promotion does."""
    with model_lock(settings, registered_name(symbol, target)):
        return _force(settings, symbol, target, version)


def _force(settings: Settings, symbol: str, target: str, version: str) -> Decision:
    mlflow.set_tracking_uri(settings.tracking_uri)
    client = MlflowClient(settings.tracking_uri)
    name = registered_name(symbol, target)
    known = sorted((v.version for v in client.search_model_versions(f"name = '{name}'")), key=int)
    if str(version) not in map(str, known):
        raise LookupError(f"{name} has no version {version}; its versions: {', '.join(map(str, known)) or 'none'}")
    champion = _current_champion(client, name)
    before = str(champion.version) if champion else None
    if before == str(version):
        raise LookupError(f"{name}: v{version} is already the champion")
    forced_at = datetime.now(UTC).isoformat(timespec="seconds")
    decision = Decision(
        name,
        True,
        str(version),
        before,
        "forced",
        [
            f"forced by itff promote --force at {forced_at}: v{version} is served without passing the "
            f"promotion test (champion before: {'v' + before if before else 'none'})"
        ],
    )
    _set_champion(client, name, str(version))
    decision.tradable = client.get_model_version(name, str(version)).tags.get("tradable") == "true"
    _record(client, decision)
    client.set_model_version_tag(name, str(version), "promotion_decision", "forced")
    return decision


def rollback_champion(settings: Settings, symbol: str, target: str) -> tuple[str, str]:
    """Point the champion alias back at the previous champion, holding the model's lock. Returns (from, to)."""
    with model_lock(settings, registered_name(symbol, target)):
        return _rollback(settings, symbol, target)


def _rollback(settings: Settings, symbol: str, target: str) -> tuple[str, str]:
    client = MlflowClient(settings.tracking_uri)
    name = registered_name(symbol, target)
    history = _history(client, name)
    if len(history) < 2:
        raise LookupError(f"{name}: no previous champion to roll back to (history: {history or 'empty'})")
    current, previous = history[-1], history[-2]
    holder = _current_champion(client, name)
    if holder is None or str(holder.version) != current:
        raise LookupError(
            f"{name}: the champion alias (v{holder.version if holder else '-'}) is not the last entry "
            f"of {HISTORY_TAG} (v{current}); set the alias by hand or promote again"
        )
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[:-1]))  # history first: it drives rollback
    client.set_registered_model_alias(name, CHAMPION, previous)
    client.set_model_version_tag(name, current, "rolled_back_at", datetime.now(UTC).isoformat(timespec="seconds"))
    return current, previous


# --- integrity
def model_manifest(name: str, version: str) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as scratch:
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=scratch))
        return artifact_manifest(local)


def champion_versions(settings: Settings) -> dict[tuple[str, str], ModelVersion]:
    """The registry version behind each configured (symbol, target)'s champion alias; models without one are absent."""
    client = MlflowClient(settings.tracking_uri)
    found: dict[tuple[str, str], ModelVersion] = {}
    for symbol in settings.symbols:
        for target in settings.training.targets:
            version = _current_champion(client, registered_name(symbol, target))
            if version is not None:
                found[(symbol, target)] = version
    return found


# --- registry bookkeeping
def _current_champion(client: MlflowClient, name: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except mlflow.exceptions.MlflowException:
        return None


def _history(client: MlflowClient, name: str) -> list[str]:
    history: list[str] = json.loads(client.get_registered_model(name).tags.get(HISTORY_TAG, "[]"))
    return history


def write_manifest(client: MlflowClient, name: str, version: str) -> None:
    """Hash the version's files and record the manifest beside them, its own hash in the registry's tag."""
    manifest = model_manifest(name, version)
    run_id = client.get_model_version(name, version).run_id
    assert run_id is not None  # versions are registered from study runs
    client.log_dict(run_id, manifest, manifest_artifact(version))
    client.set_model_version_tag(name, version, DIGEST_TAG, manifest_digest(manifest))


def _set_champion(client: MlflowClient, name: str, version: str) -> None:
    # Registration wrote the manifest; re-hashing now would bless files changed since. Only versions registered
    # before registration wrote manifests get theirs here.
    if DIGEST_TAG not in client.get_model_version(name, version).tags:
        write_manifest(client, name, version)
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps([*_history(client, name), version][-50:]))
    client.set_registered_model_alias(name, CHAMPION, version)


def baselines_on(client: MlflowClient, name: str, window: tuple[str, str]) -> dict[str, str]:
    """The newest run of each baseline family on this holdout window: family -> run id."""
    experiment = client.get_experiment_by_name(name)
    assert experiment is not None  # the study runs behind the registered versions are logged to it
    found: dict[str, str] = {}
    for family in baselines():  # MLflow's filter has no IN for tags: a query per baseline family
        runs = client.search_runs([experiment.experiment_id], f"tags.family = '{family}'", order_by=["start_time DESC"])
        for run in runs:
            if (run.data.tags.get("recent_window_start"), run.data.tags.get("recent_window_end")) == window:
                found[family] = run.info.run_id
                break
    return found


def _record(client: MlflowClient, decision: Decision, basis: str | None = None) -> Decision:
    if decision.challenger is not None:
        tags = {
            "promotion_decision": "promoted" if decision.promoted else "rejected",
            "promotion_compared_with": decision.compared_with,
            "promotion_reasons": " | ".join(decision.reasons)[:5000],
            "promotion_decided_at": datetime.now(UTC).isoformat(timespec="seconds"),
            **{f"promotion_{k}": f"{v:.6g}" for k, v in decision.figures.items()},
        }
        for key, value in tags.items():
            client.set_model_version_tag(decision.name, decision.challenger, key, value)
        # What this decision saw and left: a later run with no newer version and the same champion keeps it (_judged_before).
        latest = max(int(v.version) for v in client.search_model_versions(f"name = '{decision.name}'"))
        client.set_registered_model_tag(
            decision.name,
            LAST_DECISION_TAG,
            json.dumps(
                {
                    "version": decision.challenger,
                    "latest_version": latest,
                    "champion_after": decision.champion_after,
                    "basis": basis,
                }
            ),
        )
    return decision
