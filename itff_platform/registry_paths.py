"""Keeping the MLflow store right when the project folder moves.

MLflow records absolute `file:` URIs (experiments' artifact_location, runs' artifact_uri, logged models' and model
versions' storage) and turns a relative artifact root into an absolute one, so it cannot be told "relative to
ITFF_HOME". After a move those URIs name the old folder: gone (loading a champion fails), or still there as a copy
(it silently reads, and training writes into, the other project). `relocate` rewrites them to the current folder.
Nothing else the platform keeps holds the project's path: Delta logs, the integrity manifests and meta.json use
relative paths, the Optuna and Dagster stores are found from the settings, and a model's MLmodel file is loaded by
its basename (its `artifact_path` and `model_code_path` lines are left as recorded: the manifest hashes them).
"""

from __future__ import annotations

import shlex
import sqlite3
import sys
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from itff_platform.settings import Settings

# (table, column) holding an artifact location, and the dataset records whose JSON source names a lake path.
LOCATION_COLUMNS = [
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
]
SOURCE_COLUMNS = [("datasets", "dataset_source")]


@dataclass(frozen=True)
class Move:
    old: str  # a folder, as a plain absolute path
    new: str
    rows: int


def sqlite_file(settings: Settings) -> Path | None:
    """The tracking store's file when it is a local SQLite store (the only kind that records local paths)."""
    uri = settings.tracking_uri
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def _path(uri: str) -> str:
    return unquote(urlsplit(uri).path) if uri.startswith("file:") else uri


def recorded_roots(db: sqlite3.Connection) -> set[str]:
    """The artifact roots the platform's experiments were created under: `<root>/<experiment name>`."""
    rows = db.execute("SELECT name, artifact_location FROM experiments WHERE name LIKE 'itff-%'").fetchall()
    return {_path(location)[: -len(name) - 1] for name, location in rows if _path(location).endswith("/" + name)}


def planned_moves(settings: Settings, roots: set[str]) -> list[tuple[str, str]]:
    """(old folder, new folder) per recorded root that is not the current one. When the artifacts sit at the same
    place inside the project (mlflow/artifacts), the whole project folder moves, which also carries the Default
    experiment's folder and the lake paths in dataset records along."""
    # absolute(), not resolve(): the store records the folder as the settings name it, symlinks and all.
    new_root, home = str((settings.tracking.mlflow_dir / "artifacts").absolute()), str(settings.home.absolute())
    inside = new_root.removeprefix(home) if new_root.startswith(home + "/") else None
    moves = []
    for old_root in sorted(roots - {new_root}):
        if inside and old_root.endswith(inside):
            moves.append((old_root[: -len(inside)], home))
        else:
            moves.append((old_root, new_root))
    return moves


def _rewrite(db: sqlite3.Connection, old: str, new: str) -> int:
    """Every recorded location under `old` (plain path or file: URI) rebased onto `new`; returns the rows changed."""
    changed = 0
    forms = [(old, new), (Path(old).as_uri(), Path(new).as_uri())]
    for table, column in LOCATION_COLUMNS:
        for before, after in forms:
            # substr, not LIKE: a path's "_" and "%" are not wildcards. The "/" keeps /a/b from matching /a/bc.
            changed += db.execute(
                f"UPDATE {table} SET {column} = ? || substr({column}, ?) WHERE {column} = ? OR substr({column}, 1, ?) = ?",
                (after, len(before) + 1, before, len(before) + 1, before + "/"),
            ).rowcount
    for table, column in SOURCE_COLUMNS:  # JSON: the path is a quoted string, e.g. {"path": "/old/data_lake/silver"}
        changed += db.execute(
            f"UPDATE {table} SET {column} = replace({column}, ?, ?) WHERE instr({column}, ?) > 0",
            (f'"{old}/', f'"{new}/', f'"{old}/'),
        ).rowcount
    return changed


def relocate(settings: Settings) -> list[Move]:
    """Rebase the store's recorded paths onto the current project folder; [] when nothing had moved (or the store
    is not a local SQLite file). One transaction: a store is rewritten whole or not at all."""
    path = sqlite_file(settings)
    if path is None or not path.exists():
        return []
    with closing(sqlite3.connect(path, timeout=30)) as db, db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "experiments" not in tables:
            return []
        return [Move(old, new, _rewrite(db, old, new)) for old, new in planned_moves(settings, recorded_roots(db))]


def prepare_stores(settings: Settings) -> list[Move]:
    """Before services start on the stores: create the MLflow and Optuna schemas once (services starting together
    on an empty store race each other's migrations, and optuna-dashboard never creates one), then relocate."""
    import optuna

    import mlflow

    mlflow.MlflowClient(settings.tracking_uri).search_experiments(max_results=1)
    optuna.storages.RDBStorage(settings.study_storage)
    return relocate(settings)


def describe(moves: list[Move]) -> str:
    return "; ".join(f"registry moved from {m.old} to {m.new}: {m.rows} recorded paths rewritten" for m in moves)


def main() -> None:
    """`make dev`'s start: prepare the stores, then print the paths it needs as shell assignments."""
    import logging

    logging.disable(logging.INFO)  # MLflow's "Creating initial MLflow database tables" lines
    settings = Settings()
    moves = prepare_stores(settings)
    if moves:
        print(describe(moves), file=sys.stderr)
    for name, value in (
        ("tracking_uri", settings.tracking_uri),
        ("artifact_root", str(settings.tracking.mlflow_dir / "artifacts")),
        ("study_storage", settings.study_storage),
    ):
        print(f"{name}={shlex.quote(value)}")


if __name__ == "__main__":
    main()
