"""SHA-256 manifests of a model version's files: written when promotion makes it champion, checked by the service
before it loads one (contracts.champions), with one rule for what counts as intact.

A leaf: the standard library only. The MLflow client is passed in, so the service's start-up imports nothing more."""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path
from typing import Any, Protocol


class RegistryClient(Protocol):
    """What of MlflowClient the check calls, named here so this leaf need not import mlflow, not even for types."""

    def get_model_version(self, name: str, version: str) -> Any: ...

    def download_artifacts(self, run_id: str, path: str, dst_path: str | None = None) -> str: ...


DIGEST_TAG = "manifest_sha256"  # the registry's version tag: the manifest's own hash


def manifest_artifact(version: str) -> str:
    """Where on the version's run the manifest is logged."""
    return f"integrity/manifest-v{version}.json"


def artifact_manifest(folder: Path) -> dict[str, str]:
    """{path relative to `folder`: SHA-256 of its bytes} for every file under it."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def manifest_digest(manifest: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def manifest_problems(client: RegistryClient, name: str, version: str, folder: Path) -> list[str]:
    """What is wrong with `folder`, the downloaded files of `name` v`version`; empty when intact. The manifest is
    logged beside the model, so it is itself checked against the hash in the registry's tag first."""
    model_version = client.get_model_version(name, version)
    with tempfile.TemporaryDirectory() as scratch:
        recorded = json.loads(
            Path(client.download_artifacts(model_version.run_id, manifest_artifact(version), scratch)).read_text()
        )
    tag = model_version.tags.get(DIGEST_TAG)
    if tag is None or manifest_digest(recorded) != tag:
        return [f"the manifest does not match the registry's {DIGEST_TAG} tag"]
    actual = artifact_manifest(folder)
    problems = [f"{path}: sha256 differs" for path, digest in recorded.items() if actual.get(path) != digest]
    return problems + [f"{path}: not in the manifest" for path in actual if path not in recorded]
