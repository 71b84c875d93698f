"""The champions the service serves: loaded from the MLflow registry, verified against their SHA-256 manifest,
swapped atomically when the alias moves. A model that fails verification is refused and reported unhealthy;
whatever was serving before keeps serving."""

from __future__ import annotations

import json
import logging
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from itff_platform.contracts.consensus import Standing, standing
from itff_platform.manifests import manifest_problems
from itff_platform.rules import no_champion_remedy, registered_name
from itff_platform.settings import Settings

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

    from itff_platform.models.base import ServedForecaster
    from mlflow import MlflowClient

log = logging.getLogger(__name__)
NO_CHAMPION = "no champion in the registry (no version has passed promotion yet)"
NEVER_TRAINED = "no version is registered: it has not been trained"
NOT_JUDGED = "promotion has not judged any of its versions yet"


class IntegrityError(ValueError):
    """A model's files or manifest do not match what promotion recorded."""


@dataclass(frozen=True)
class LoadedModel:
    name: str
    symbol: str
    target: str
    version: str
    family: str
    meta: dict[str, Any]
    forecaster: ServedForecaster

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(the probability or bands that were evaluated and promoted, MC-dropout spread or None)."""
        if self.meta["task"] == "regression":
            return self.forecaster.predict_proba(x), None
        return self.forecaster.predict_with_uncertainty(x)


@dataclass
class ModelStatus:
    name: str
    serving_version: str | None = None
    healthy: bool = False
    problem: str | None = None
    refused_versions: list[str] = field(default_factory=list)
    # Without a champion: why (the registry's record of the last promotion decision), and the version it judged.
    reason: str | None = None
    judged_version: str | None = None


class ChampionStore:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.models: dict[tuple[str, str], LoadedModel] = {}
        self.status: dict[str, ModelStatus] = {}
        self._family_cache: dict[tuple[str, str], LoadedModel] = {}
        self._lock = threading.Lock()
        self._store_ready = False

    def keys(self) -> list[tuple[str, str]]:
        return [(s, t) for s in self.settings.symbols for t in self.settings.training.targets]

    def refresh(self) -> dict[str, str]:
        """Check every champion alias; load, verify and swap in any that moved. Returns what changed."""
        from mlflow.exceptions import MlflowException

        import mlflow
        from mlflow import MlflowClient

        # Artifact downloads ("models:/...") go through the global URI, not the client's: set both.
        mlflow.set_tracking_uri(self.settings.tracking_uri)
        if not self._store_ready:
            opened_one_at_a_time(self.settings.tracking_uri)
            self._store_ready = True
        client = MlflowClient(self.settings.tracking_uri)
        # One refresh at a time: the poller and /admin/reload must not race an older swap over a newer one.
        with self._lock:
            return self._refresh(client, MlflowException)

    def _refresh(self, client: MlflowClient, MlflowException: type[Exception]) -> dict[str, str]:
        changes: dict[str, str] = {}
        loaded = dict(self.models)
        for symbol, target in self.keys():
            name = registered_name(symbol, target)
            status = self.status.setdefault(name, ModelStatus(name))
            try:
                version = client.get_model_version_by_alias(name, "champion")
            except MlflowException:
                status.problem = NO_CHAMPION
                status.reason, status.judged_version = last_decision(client, name)
                continue
            status.reason = status.judged_version = None
            current, wanted = loaded.get((symbol, target)), str(version.version)  # MLflow 3 hands back ints
            if current is not None and current.version == wanted:
                continue
            if wanted in status.refused_versions:
                continue
            try:
                model = self._load_verified(client, name, symbol, target, wanted)
            except IntegrityError as error:  # tampered: refused for good, the previous champion keeps serving
                status.refused_versions.append(wanted)
                status.healthy, status.problem = current is not None, f"v{wanted} refused: {error}"
                log.error("%s: %s", name, status.problem)
                changes[name] = status.problem
                continue
            except Exception as error:  # e.g. the registry briefly unreachable: try again on the next refresh
                status.problem = f"v{wanted} not loaded yet: {error}"
                changes[name] = status.problem
                continue
            loaded[(symbol, target)] = model
            status.serving_version, status.healthy, status.problem = model.version, True, None
            changes[name] = f"serving v{model.version} ({model.family})"
        self.models = loaded  # one assignment: a request sees the old set or the new one, never a mix
        return changes

    def _load_verified(
        self, client: MlflowClient, name: str, symbol: str, target: str, version: str, verify: bool = True
    ) -> LoadedModel:
        import mlflow
        from itff_platform.models import load_forecaster

        with tempfile.TemporaryDirectory() as scratch:
            local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=f"{scratch}/model"))
            problems = manifest_problems(client, name, version, local) if verify else []
            if problems:
                raise IntegrityError("; ".join(problems))
            folder = local / "artifacts" / "forecaster"
            meta = json.loads((folder / "meta.json").read_text())
            forecaster = load_forecaster(folder)
        return LoadedModel(name, symbol, target, version, meta["family"], meta, forecaster)

    def family_models(self, symbol: str, target: str) -> tuple[list[tuple[LoadedModel, Standing]], dict[str, str]]:
        """The voters of /consensus with their standing (contracts.consensus: each family's latest registered
        version, if it passed validation), and why every other family is left out. A version without its
        SHA-256 manifest is never loaded: that would unpickle whatever someone registered."""
        from mlflow import MlflowClient

        client = MlflowClient(self.settings.tracking_uri)
        name = registered_name(symbol, target)
        latest: dict[str, ModelVersion] = {}
        for version in client.search_model_versions(f"name = '{name}'"):
            family = version.tags.get("family", "?")
            if "rolled_back_at" in version.tags:  # an operator undid it: it does not speak for its family
                continue
            if family not in latest or int(version.version) > int(latest[family].version):
                latest[family] = version
        out: list[tuple[LoadedModel, Standing]] = []
        skipped: dict[str, str] = {}
        for family, version in sorted(latest.items()):
            vote = standing(version.tags)
            key = (name, str(version.version))
            if vote.refusal is not None:
                skipped[family] = f"v{key[1]} {vote.refusal}"
                continue
            if key not in self._family_cache:
                try:
                    self._family_cache[key] = self._load_verified(client, name, symbol, target, key[1])
                except Exception as error:
                    skipped[family] = f"v{key[1]} not loaded: {error}"
                    continue
            out.append((self._family_cache[key], vote))
        return out, skipped

    def get(self, symbol: str, target: str) -> LoadedModel | None:
        return self.models.get((symbol, target))

    def ready(self) -> bool:
        """Every champion the registry names is loaded and verified. A model promotion never accepted has no
        champion to wait for: it is reported, and its predictions get a 4xx, but it does not hold readiness."""
        statuses = [self.status.get(registered_name(s, t), ModelStatus("")) for s, t in self.keys()]
        return any(st.healthy for st in statuses) and all(st.healthy or st.problem == NO_CHAMPION for st in statuses)

    def report(self) -> dict[str, Any]:
        """Every model's state; a model without a champion also says why and what to do."""
        report: dict[str, Any] = {}
        for symbol, target in self.keys():
            status = self.status.get(registered_name(symbol, target))
            if status is not None:
                report[status.name] = {**vars(status), "remedy": self.remedy(symbol, target)}
        return dict(sorted(report.items()))

    def why_missing(self, symbol: str, target: str) -> tuple[str, dict[str, str | None]]:
        """(the message, the extra answer fields) of the 400 a prediction for a model with no loaded champion
        gets: why, and what to do. The service raises it as its RequestError."""
        status = self.status.get(registered_name(symbol, target), ModelStatus(""))
        if status.problem != NO_CHAMPION:  # there is a champion, but it is refused or not loaded (yet)
            return (
                f"symbol/target: no verified champion is loaded for {symbol} {target}: "
                f"{status.problem or 'not loaded yet'}"
            ), {}
        remedy = self.remedy(symbol, target)
        return (
            f"symbol/target: {symbol} {target} has no champion: {status.reason}; {remedy}",
            {"reason": status.reason, "remedy": remedy},
        )

    def remedy(self, symbol: str, target: str) -> str | None:
        """What to do about a model without a champion; None for one that has one."""
        status = self.status.get(registered_name(symbol, target))
        if status is None or status.problem != NO_CHAMPION:
            return None
        promote = f"itff promote --symbol {symbol} --target {target}"
        if status.reason == NEVER_TRAINED:
            return f"to get one: train it (itff train --symbol {symbol} --target {target}), then {promote}"
        assert status.reason is not None  # set by last_decision whenever the problem is NO_CHAMPION
        if status.reason.startswith(NOT_JUDGED):
            return f"to get one: let promotion judge it ({promote})"
        return no_champion_remedy(symbol, target, status.judged_version)


def opened_one_at_a_time(tracking_uri: str) -> None:
    """Open a SQLite tracking store under an exclusive lock beside it. Opening a store that is new, or older than
    this MLflow, runs MLflow's schema migration; the service's workers start together, and two migrations at once
    killed one of them ("duplicate column name"). The first migrates; the next finds the schema current. MLflow
    keeps the opened stores for the process, so later clients open nothing."""
    if not tracking_uri.startswith("sqlite:///"):
        return  # a server (the cluster profile) migrates its own database once, at its start
    import fcntl

    from mlflow import MlflowClient

    database = Path(tracking_uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".open-lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        client = MlflowClient(tracking_uri)  # the tracking store: created or migrated here
        client.search_registered_models(max_results=1)  # and the registry's, on the same file


def last_decision(client: MlflowClient, name: str) -> tuple[str, str | None]:
    """(why `name` has no champion, the version promotion last judged), from the registry's version tags, where
    promotion records each decision and its reasons."""
    versions = client.search_model_versions(f"name = '{name}'")
    if not versions:
        return NEVER_TRAINED, None
    judged = [v for v in versions if "promotion_decision" in v.tags]
    if not judged:
        return f"{NOT_JUDGED} ({len(versions)} registered)", str(max(int(v.version) for v in versions))
    last = max(judged, key=lambda v: int(v.version))
    tags = last.tags
    return (
        f"promotion {tags['promotion_decision']} v{last.version} at {tags.get('promotion_decided_at', '?')}: "
        f"{tags.get('promotion_reasons', 'no reasons recorded')}"
    ), str(last.version)
