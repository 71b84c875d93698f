"""Moving the project folder keeps the registry working (issue 11, item 15). MLflow records absolute file: URIs, so
after a move the champion's files were looked for in the old folder; `itff relocate` (which the CLI's commands,
`make dev` and `make serve` run themselves) rebases them onto the new one."""

import shutil
import sqlite3
from contextlib import closing

import numpy as np
import pandas as pd
import pytest

import mlflow
from itff_platform import cli
from itff_platform.contracts.champions import ChampionStore
from itff_platform.registry_paths import LOCATION_COLUMNS, SOURCE_COLUMNS
from itff_platform.settings import Settings, get_settings
from itff_platform.training.promotion import promote_champion
from itff_platform_tests.serving.test_service import feature_row
from itff_platform_tests.training.test_promotion import NAME, train

SCOPE = dict(symbols=["PROMOUSDT"], targets=["direction"], trials=1, wf_folds=3)


@pytest.fixture(scope="module")
def moved(tmp_path_factory):
    """A registry with a promoted champion, built in one folder and then moved (the old folder is gone)."""
    before = tmp_path_factory.mktemp("relocate") / "project"
    settings = Settings(home=before, **SCOPE)
    mlflow.set_tracking_uri(settings.tracking_uri)
    train(settings, ["logistic"], noise=0.2)
    assert promote_champion(settings, "PROMOUSDT", "direction").promoted
    after = before.parent / "elsewhere" / "project"
    after.parent.mkdir()
    shutil.move(before, after)
    return before, Settings(home=after, **SCOPE)


def recorded(settings: Settings) -> list[str]:
    """Every path-bearing value the MLflow store holds."""
    with closing(sqlite3.connect(settings.tracking.mlflow_dir / "mlflow.db")) as db:
        return [
            value
            for table, column in LOCATION_COLUMNS + SOURCE_COLUMNS
            for (value,) in db.execute(f"SELECT {column} FROM {table}")
            if value
        ]


def test_a_moved_project_serves_its_champion_after_itff_relocate(moved, monkeypatch, capsys, tmp_path):
    before, settings = moved
    mlflow.set_tracking_uri(settings.tracking_uri)
    stale = ChampionStore(settings)
    stale.refresh()  # what the service did after a move: the champion's files are looked for in the old folder
    assert stale.get("PROMOUSDT", "direction") is None and "not loaded" in stale.status[NAME].problem
    assert any(str(before) in value for value in recorded(settings))

    monkeypatch.setenv("ITFF_HOME", str(settings.home))
    monkeypatch.setenv("ITFF_SYMBOLS", '["PROMOUSDT"]')
    monkeypatch.setenv("ITFF_TARGETS", '["direction"]')
    get_settings.cache_clear()
    assert cli.main(["relocate"]) == 0
    said = capsys.readouterr().out
    assert f"registry moved from {before} to {settings.home}" in said, said
    assert not [value for value in recorded(settings) if str(before) in value]
    assert cli.main(["relocate"]) == 0 and "nothing to rewrite" in capsys.readouterr().out  # idempotent
    get_settings.cache_clear()

    store = ChampionStore(settings)  # the service's load: downloaded from the registry and verified by its manifest
    store.refresh()
    champion = store.get("PROMOUSDT", "direction")
    assert champion is not None and store.status[NAME].healthy, store.report()
    row = feature_row(settings)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{NAME}@champion", dst_path=str(tmp_path))
    answer = pyfunc.predict(pd.DataFrame([row]).assign(regime="ranging"))
    assert 0 <= float(answer["prob_up"].iloc[0]) <= 1
    assert np.isfinite(champion.predict(np.array([[row[name] for name in champion.meta["features"]]]))[0]).all()
    # New runs land in the moved folder too: the experiment's artifact location was rebased with the rest.
    experiment = mlflow.MlflowClient(settings.tracking_uri).get_experiment_by_name(NAME)
    assert experiment.artifact_location == f"{settings.artifact_location}/{NAME}"


def test_the_cli_commands_that_use_the_registry_rebase_it_themselves(moved, monkeypatch, capsys):
    _, settings = moved
    again = settings.home.parent.parent / "third" / "project"
    again.parent.mkdir()
    shutil.move(settings.home, again)
    monkeypatch.setenv("ITFF_HOME", str(again))
    monkeypatch.setenv("ITFF_SYMBOLS", '["PROMOUSDT"]')
    monkeypatch.setenv("ITFF_TARGETS", '["direction"]')
    get_settings.cache_clear()
    try:
        cli.main(["rollback", "PROMOUSDT", "direction"])  # no earlier champion to go back to; it relocates first
    finally:
        get_settings.cache_clear()
    said = capsys.readouterr().out
    assert "registry moved from " in said and f" to {again}: " in said, said
    store = ChampionStore(Settings(home=again, **SCOPE))
    store.refresh()
    assert store.get("PROMOUSDT", "direction") is not None, store.report()
