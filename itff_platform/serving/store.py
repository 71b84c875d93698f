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

import numpy as np

from itff_platform.settings import Settings

log = logging.getLogger(__name__)
NO_CHAMPION = "no champion in the registry (no version has passed promotion yet)"


@dataclass(frozen=True)
class LoadedModel:
    name: str
    symbol: str
    target: str
    version: str
    family: str
    meta: dict
    forecaster: object

    def predict(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        if self.meta["task"] == "regression":
            return self.forecaster.predict_proba(x), None
        if self.forecaster.family in ("lstm", "transformer"):
            return self.forecaster.predict_with_uncertainty(x)
        return self.forecaster.predict_proba(x), None


@dataclass
class ModelStatus:
    name: str
    serving_version: str | None = None
    healthy: bool = False
    problem: str | None = None
    refused_versions: list[str] = field(default_factory=list)


class ChampionStore:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.models: dict[tuple[str, str], LoadedModel] = {}
        self.status: dict[str, ModelStatus] = {}
        self._family_cache: dict[tuple[str, str], tuple[LoadedModel, bool]] = {}
        self._lock = threading.Lock()

    def keys(self) -> list[tuple[str, str]]:
        return [(s, t) for s in self.settings.symbols for t in self.settings.targets]

    def refresh(self) -> dict[str, str]:
        """Check every champion alias; load, verify and swap in any that moved. Returns what changed."""
        import mlflow
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        # Artifact downloads ("models:/...") go through the global URI, not the client's: set both.
        mlflow.set_tracking_uri(self.settings.tracking_uri)
        client = MlflowClient(self.settings.tracking_uri)
        changes = {}
        loaded = dict(self.models)
        for symbol, target in self.keys():
            name = f"itff-{symbol}-{target}"
            status = self.status.setdefault(name, ModelStatus(name))
            try:
                version = client.get_model_version_by_alias(name, "champion")
            except MlflowException:
                status.problem = NO_CHAMPION
                continue
            current, wanted = loaded.get((symbol, target)), str(version.version)  # MLflow 3 hands back ints
            if current is not None and current.version == wanted:
                continue
            if wanted in status.refused_versions:
                continue
            try:
                model = self._load_verified(client, name, symbol, target, wanted)
            except Exception as error:  # a refused model must never take the service down
                status.refused_versions.append(wanted)
                status.healthy = current is not None
                status.problem = f"v{wanted} refused: {error}"
                log.error("%s: %s", name, status.problem)
                changes[name] = status.problem
                continue
            loaded[(symbol, target)] = model
            status.serving_version, status.healthy, status.problem = model.version, True, None
            changes[name] = f"serving v{model.version} ({model.family})"
        with self._lock:
            self.models = loaded  # one assignment: a request sees the old set or the new one, never a mix
        return changes

    def _load_verified(self, client, name: str, symbol: str, target: str, version: str, verify: bool = True) -> LoadedModel:
        import mlflow

        from itff_platform.models import load_forecaster
        from itff_platform.training.promotion import artifact_manifest

        run_id = client.get_model_version(name, version).run_id
        with tempfile.TemporaryDirectory() as scratch:
            local = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=f"{scratch}/model"))
            if verify:
                manifest_path = Path(client.download_artifacts(run_id, f"integrity/manifest-v{version}.json", scratch))
                recorded, actual = json.loads(manifest_path.read_text()), artifact_manifest(local)
                changed = sorted(p for p, digest in recorded.items() if actual.get(p) != digest)
                extra = sorted(set(actual) - set(recorded))
                if changed or extra:
                    raise ValueError(f"manifest mismatch: changed {changed}, unexpected {extra}")
            folder = local / "artifacts" / "forecaster"
            meta = json.loads((folder / "meta.json").read_text())
            forecaster = load_forecaster(folder)
        return LoadedModel(name, symbol, target, version, meta["family"], meta, forecaster)

    def family_models(self, symbol: str, target: str) -> list[tuple[LoadedModel, bool]]:
        """The latest registered version of every family, for /consensus: (model, verified). Versions that were
        promoted once carry a manifest and are verified; the others cannot be, and say so."""
        from mlflow import MlflowClient

        client = MlflowClient(self.settings.tracking_uri)
        name = f"itff-{symbol}-{target}"
        latest: dict[str, object] = {}
        for version in client.search_model_versions(f"name = '{name}'"):
            family = version.tags.get("family", "?")
            if family not in latest or int(version.version) > int(latest[family].version):
                latest[family] = version
        out = []
        for family, version in sorted(latest.items()):
            key = (name, str(version.version))
            if key not in self._family_cache:
                verified = "manifest_sha256" in version.tags
                self._family_cache[key] = (self._load_verified(client, name, symbol, target, key[1], verify=verified), verified)
            out.append(self._family_cache[key])
        return out

    def get(self, symbol: str, target: str) -> LoadedModel | None:
        return self.models.get((symbol, target))

    def ready(self) -> bool:
        """Every champion the registry names is loaded and verified. A model promotion never accepted has no
        champion to wait for: it is reported, and its predictions get a 4xx, but it does not hold readiness."""
        statuses = [self.status.get(f"itff-{s}-{t}", ModelStatus("")) for s, t in self.keys()]
        return any(st.healthy for st in statuses) and all(st.healthy or st.problem == NO_CHAMPION for st in statuses)

    def report(self) -> dict:
        return {name: vars(status) for name, status in sorted(self.status.items())}
