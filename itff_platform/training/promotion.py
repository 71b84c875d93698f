"""Champion/challenger promotion in the MLflow registry, rollback, and SHA-256 manifests of model artifacts.

The challenger is the best version registered since the current champion (by log loss, or pinball loss, on
its most recent out-of-sample window): one training run registers a version per family, and "the newest"
alone would mean "whichever family happened to train last". It is compared with the champion on the same
window; a champion trained on older data is scored there only if that window is out of sample for it."""

from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import mlflow
import numpy as np
from mlflow import MlflowClient

from itff_platform.settings import Settings
from itff_platform.training.study import registered_name

CHAMPION = "champion"
HISTORY_TAG = "champion_history"


@dataclass(frozen=True)
class Candidate:
    version: str
    run_id: str
    family: str
    metrics: dict[str, float]
    tags: dict[str, str]

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

    @property
    def champion_after(self) -> str | None:
        return self.challenger if self.promoted else self.champion_before


def _candidate(client: MlflowClient, version) -> Candidate:
    run = client.get_run(version.run_id)
    return Candidate(str(version.version), version.run_id, version.tags.get("family", "?"), run.data.metrics, run.data.tags)


def loss_key(task: str) -> str:
    return "recent_pinball_loss" if task == "regression" else "recent_log_loss"


def decide(challenger: Candidate, reference: dict[str, float], reference_name: str, task: str, settings: Settings,
           against_baseline: bool) -> tuple[bool, list[str]]:
    """The rules, each one a reason whether it passes or fails."""
    key = loss_key(task)
    needed = [key] + (["recent_ece"] if task == "classification" and not against_baseline else [])
    missing = [k for k in needed if k not in challenger.metrics or k not in reference]
    if missing:
        return False, [f"cannot compare: {missing} missing for the challenger or {reference_name}"]
    reasons, ok = [], True
    mine, theirs = challenger.metrics[key], reference[key]
    margin = 0.0 if against_baseline else settings.promotion_margin
    beats = mine < theirs - margin
    ok &= beats
    reasons.append(f"{key} {mine:.5f} vs {reference_name} {theirs:.5f}: {'beats' if beats else 'does not beat'} it"
                   + (f" by the margin {margin}" if margin else ""))
    if task == "classification":
        if not against_baseline:
            worse = challenger.metrics["recent_ece"] - reference["recent_ece"]
            calibrated = worse <= settings.promotion_calibration_tolerance
            ok &= calibrated
            reasons.append(f"ECE {challenger.metrics['recent_ece']:.4f} vs {reference['recent_ece']:.4f}: "
                           f"{'within' if calibrated else 'beyond'} the tolerance {settings.promotion_calibration_tolerance}")
        trades = int(challenger.metrics.get("recent_trades", 0))
        enough = trades >= settings.promotion_min_trades
        ok &= enough
        reasons.append(f"{trades} trades on the recent window: {'at least' if enough else 'fewer than'} {settings.promotion_min_trades}")
    return ok, reasons


def _score_on_window(settings: Settings, symbol: str, target: str, model_uri: str, window: tuple[str, str]) -> dict[str, float]:
    """Score a (champion) model on the challenger's recent window, from the lake's silver rows."""
    from itff_platform.training import metrics as m
    from itff_platform.training.backtest import allows_short, backtest
    from itff_platform.training.dataset import training_data

    data = training_data(settings, symbol, target)
    import pandas as pd

    start, end = (np.datetime64(w) for w in window)
    rows = np.flatnonzero((data.timestamps >= start) & (data.timestamps <= end))
    if len(rows) == 0:
        return {}  # decide() then refuses: nothing to compare on
    model = mlflow.pyfunc.load_model(model_uri)
    # Hand sequence models the history before the window, then keep only the window's own predictions.
    context = int(json.loads(Path(mlflow.artifacts.download_artifacts(f"{model_uri}/artifacts/forecaster/meta.json")).read_text()).get("context_rows", 0))
    first = max(0, rows[0] - context)
    frame = pd.DataFrame(data.x[first : rows[-1] + 1], columns=data.features).assign(regime=data.regimes[first : rows[-1] + 1].astype(str))
    out = model.predict(frame).iloc[rows[0] - first :]
    rows = slice(rows[0], rows[-1] + 1)
    if data.task == "regression":
        return {"recent_pinball_loss": m.pinball_loss(data.y[rows], out[["p10", "p50", "p90"]].to_numpy())}
    prob = out["prob_up"].to_numpy()
    threshold = float(out["threshold"].iloc[0])
    return {
        "recent_log_loss": float(m.log_loss(data.y[rows], prob, labels=[0, 1])),
        "recent_ece": m.expected_calibration_error(data.y[rows], prob),
        "recent_trades": backtest(prob, data.forward_return[rows], threshold, settings.fees_bps, settings.label_horizon, 1,
                                  allows_short(target)).metrics["trades"],
    }


def promote_champion(settings: Settings, symbol: str, target: str) -> Decision:
    mlflow.set_tracking_uri(settings.tracking_uri)
    client = MlflowClient(settings.tracking_uri)
    name = registered_name(symbol, target)
    task = "regression" if target == "forward_return" else "classification"
    versions = client.search_model_versions(f"name = '{name}'")
    if not versions:
        raise LookupError(f"{name}: no registered versions; materialize trained_models first")
    champion = _current_champion(client, name)
    # A version rolled back from is not a challenger again until someone retrains.
    newer = [v for v in versions if (champion is None or int(v.version) > int(champion.version)) and "rolled_back_at" not in v.tags]
    if not newer:
        return Decision(name, False, None, str(champion.version), "-", ["no version newer than the champion"])
    challengers = [c for c in (_candidate(client, v) for v in newer) if all(c.window) and loss_key(task) in c.metrics]
    if not challengers:
        return Decision(name, False, None, str(champion.version) if champion else None, "-",
                        ["no newer version carries holdout metrics to compare"])
    # Losses are comparable only on one window: the newest training run's.
    newest_window = max(c.window for c in challengers)
    challenger = min((c for c in challengers if c.window == newest_window), key=lambda c: c.metrics[loss_key(task)])

    if champion is None:
        baselines = _baselines_on(client, name, challenger.window)
        if not baselines:
            return _record(client, Decision(name, False, challenger.version, None, "baselines",
                                            ["no baseline run on the same window to compare with"]))
        best_name, best = min(baselines.items(), key=lambda kv: kv[1][loss_key(task)])
        promoted, reasons = decide(challenger, best, best_name, task, settings, against_baseline=True)
        decision = Decision(name, promoted, challenger.version, None, best_name, reasons)
    else:
        holder = _candidate(client, champion)
        if holder.window == challenger.window:
            reference = holder.metrics
        elif _trained_before(holder, challenger.window[0], settings):
            reference = _score_on_window(settings, symbol, target, f"models:/{name}/{champion.version}", challenger.window)
        else:
            return _record(client, Decision(name, False, challenger.version, str(champion.version), f"v{champion.version}", [
                f"not comparable: champion v{champion.version} was trained through {holder.tags.get('trained_through')}, "
                f"inside the challenger's window {challenger.window[0]}..{challenger.window[1]}"]))
        promoted, reasons = decide(challenger, reference, f"champion v{champion.version}", task, settings, against_baseline=False)
        decision = Decision(name, promoted, challenger.version, str(champion.version), f"v{champion.version}", reasons)
    decision.figures = {k: challenger.metrics[k] for k in (loss_key(task), "recent_ece", "recent_trades") if k in challenger.metrics}
    if decision.promoted:
        _set_champion(client, name, challenger.version)
    return _record(client, decision)


def _trained_before(holder: Candidate, window_start: str, settings: Settings) -> bool:
    """True when the holder's last training label was known before the window opened, so the window is out of
    sample for it: its last training bar plus the label horizon (and that bar itself) precede the window."""

    last = holder.tags.get("trained_through")
    if not last:
        return False
    known = datetime.fromisoformat(last) + timedelta(seconds=(settings.label_horizon + 1) * settings.interval_seconds)
    return known <= datetime.fromisoformat(window_start)


def rollback_champion(settings: Settings, symbol: str, target: str) -> tuple[str, str]:
    """Point the champion alias back at the previous champion. Returns (from, to) versions."""
    client = MlflowClient(settings.tracking_uri)
    name = registered_name(symbol, target)
    history = _history(client, name)
    if len(history) < 2:
        raise LookupError(f"{name}: no previous champion to roll back to (history: {history or 'empty'})")
    current, previous = history[-1], history[-2]
    holder = _current_champion(client, name)
    if holder is None or str(holder.version) != current:
        raise LookupError(f"{name}: the champion alias (v{holder.version if holder else '-'}) is not the last entry "
                          f"of {HISTORY_TAG} (v{current}); set the alias by hand or promote again")
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps(history[:-1]))  # history first: it drives rollback
    client.set_registered_model_alias(name, CHAMPION, previous)
    client.set_model_version_tag(name, current, "rolled_back_at", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    return current, previous


# --- integrity
def artifact_manifest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def model_manifest(name: str, version: str) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as scratch:
        local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=scratch))
        return artifact_manifest(local)


def model_storage(client: MlflowClient, name: str, version: str) -> str:
    """Where the registry keeps a version's files (its logged model's artifact location)."""
    source = client.get_model_version(name, version).source  # "models:/m-<id>" in MLflow 3
    return client.get_logged_model(source.rsplit("/", 1)[-1]).artifact_location


def verify_model(client: MlflowClient, name: str, version: str) -> list[str]:
    """Files whose bytes no longer match the manifest recorded at promotion; empty when intact."""
    run_id = client.get_model_version(name, version).run_id
    with tempfile.TemporaryDirectory() as scratch:
        recorded = json.loads(Path(client.download_artifacts(run_id, f"integrity/manifest-v{version}.json", scratch)).read_text())
    actual = model_manifest(name, version)
    problems = [f"{path}: sha256 differs" for path, digest in recorded.items() if actual.get(path) != digest]
    problems += [f"{path}: not in the manifest" for path in actual if path not in recorded]
    return problems


def champion_versions(settings: Settings) -> dict[tuple[str, str], object]:
    """The registry version behind each configured (symbol, target)'s champion alias; models without one are absent."""
    client = MlflowClient(settings.tracking_uri)
    found = {}
    for symbol in settings.symbols:
        for target in settings.targets:
            version = _current_champion(client, registered_name(symbol, target))
            if version is not None:
                found[(symbol, target)] = version
    return found


# --- registry bookkeeping
def _current_champion(client: MlflowClient, name: str):
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except mlflow.exceptions.MlflowException:
        return None


def _history(client: MlflowClient, name: str) -> list[str]:
    return json.loads(client.get_registered_model(name).tags.get(HISTORY_TAG, "[]"))


def _set_champion(client: MlflowClient, name: str, version: str) -> None:
    manifest = model_manifest(name, version)
    run_id = client.get_model_version(name, version).run_id
    client.log_dict(run_id, manifest, f"integrity/manifest-v{version}.json")
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()
    client.set_model_version_tag(name, version, "manifest_sha256", digest)
    client.set_registered_model_tag(name, HISTORY_TAG, json.dumps([*_history(client, name), version][-50:]))
    client.set_registered_model_alias(name, CHAMPION, version)


def _baselines_on(client: MlflowClient, name: str, window: tuple[str, str]) -> dict[str, dict[str, float]]:
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], "tags.family LIKE 'baseline_%'", order_by=["start_time DESC"])
    found: dict[str, dict[str, float]] = {}
    for run in runs:
        family = run.data.tags["family"]
        same = (run.data.tags.get("recent_window_start"), run.data.tags.get("recent_window_end")) == window
        if same and family not in found:
            found[family] = run.data.metrics
    return found


def _record(client: MlflowClient, decision: Decision) -> Decision:
    if decision.challenger is not None:
        tags = {
            "promotion_decision": "promoted" if decision.promoted else "rejected",
            "promotion_compared_with": decision.compared_with,
            "promotion_reasons": " | ".join(decision.reasons)[:5000],
            "promotion_decided_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        for key, value in tags.items():
            client.set_model_version_tag(decision.name, decision.challenger, key, value)
    return decision
