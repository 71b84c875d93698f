"""A second `make run` on unchanged inputs, as real Dagster materializations on a real Delta lake and MLflow store:
the lake skips every partition, every study is reused from its earlier run (and says so on its partition), no model
version is registered twice and promotion keeps what it decided. Then one label setting changes: silver is rebuilt,
and only the target whose labels moved is retrained."""

import math

import pytest
from dagster import DagsterInstance, materialize

from itff_platform.definitions import lake, promotion, training
from itff_platform.defs.resources import ItffSettingsResource
from itff_platform.defs.training_assets import summary_rows
from itff_platform.settings import Settings
from mlflow import MlflowClient

PARTITIONS = ["BTCUSDT|direction", "BTCUSDT|level_up"]
ENV = {
    "ITFF_FAMILIES": '["logistic"]',
    "ITFF_TRIALS": "1",
    "ITFF_WF_FOLDS": "2",
    "ITFF_MAX_ECE": "1",
}  # register whatever one trial gives: every partition then has a version to count


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    home = tmp_path_factory.mktemp("incremental_run")
    runs = []

    def run(**changes: str) -> dict:
        """One `make run` (lake, training, promotion) with these ITFF_* changes; the results of its three runs."""
        with pytest.MonkeyPatch.context() as env:
            for key, value in {**ENV, "ITFF_MLFLOW_DIR": str(home / "mlflow"), **changes}.items():
                env.setenv(key, value)
            options = dict(instance=instance, resources={"itff": ItffSettingsResource(lake_dir=str(home / "lake"))})
            done = {
                "lake": materialize(
                    lake,
                    tags={
                        "dagster/asset_partition_range_start": "2022-10-01|BTCUSDT",
                        "dagster/asset_partition_range_end": "2023-06-01|BTCUSDT",
                    },
                    **options,
                ),
                "training": materialize(
                    [*training, *promotion],
                    tags={
                        "dagster/asset_partition_range_start": PARTITIONS[0],
                        "dagster/asset_partition_range_end": PARTITIONS[-1],
                    },
                    **options,
                ),
            }
        assert all(result.success for result in done.values())
        runs.append(done)
        return done

    instance = DagsterInstance.ephemeral()
    run()
    return run, runs, MlflowClient(Settings(mlflow_dir=home / "mlflow").tracking_uri)


def partition_metadata(result, asset: str) -> dict[str, dict]:
    return {
        event.partition: {k: v.value for k, v in event.materialization.metadata.items()}
        for event in result.get_asset_materialization_events()
        if event.asset_key.to_user_string() == asset
    }


def versions(client: MlflowClient) -> dict[str, int]:
    return {p: len(client.search_model_versions(f"name = 'itff-{p.replace('|', '-')}'")) for p in PARTITIONS}


def same(a, b) -> bool:
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def unchanged_per_asset(result) -> dict[str, int]:
    return {
        asset: sum(meta["unchanged"] for meta in partition_metadata(result, asset).values())
        for asset in ("raw_candles", "bronze_candles", "silver_features")
    }


def test_a_second_run_on_unchanged_inputs_skips_the_lake_reuses_every_study_and_registers_nothing(project):
    run, runs, client = project
    registered = versions(client)
    assert registered == {p: 1 for p in PARTITIONS}
    first, second = runs[0], run()

    assert versions(client) == registered  # no duplicate version
    assert unchanged_per_asset(first["lake"]) == {"raw_candles": 0, "bronze_candles": 0, "silver_features": 0}
    assert unchanged_per_asset(second["lake"]) == {"raw_candles": 9, "bronze_candles": 9, "silver_features": 9}

    before = {(r["target"], r["family"]): r for r in summary_rows(first["training"])}
    after = {(r["target"], r["family"]): r for r in summary_rows(second["training"])}
    assert len(after) == 6 and all(row["reused"] for row in after.values())
    for key, row in after.items():  # the same figures, read back from the runs that produced them
        assert [c for c in row if c != "reused" and not same(row[c], before[key][c])] == [], (key, row, before[key])
    for partition, meta in partition_metadata(second["training"], "trained_models").items():
        assert meta["studies_reused"] == 3
        for family in ("baseline_majority", "baseline_persistence", "logistic"):
            run_id = before[(partition.split("|")[1], family)]["run_id"]
            assert f"- {family}: unchanged since run [{run_id}](" in meta["unchanged_since"]
        assert meta["plot: logistic reliability"].startswith("![")  # the earlier run's figures, still on the page
    decisions = partition_metadata(second["training"], "champion_models")
    assert {p: m["summary"][0]["decision"] for p, m in decisions.items()} == {p: "kept" for p in PARTITIONS}


def test_a_changed_label_setting_rebuilds_silver_and_retrains_only_the_target_it_labels(project):
    run, _runs, client = project
    registered = versions(client)
    changed = run(ITFF_LABEL_BARRIER_ATR="1.5")  # the level_up barrier: direction's labels do not move

    assert unchanged_per_asset(changed["lake"]) == {"raw_candles": 9, "bronze_candles": 9, "silver_features": 0}
    reused = {(r["target"], r["family"]): r["reused"] for r in summary_rows(changed["training"])}
    assert reused == {("direction", f): True for f in ("baseline_majority", "baseline_persistence", "logistic")} | {
        ("level_up", f): False for f in ("baseline_majority", "baseline_persistence", "logistic")
    }
    assert versions(client) == {
        "BTCUSDT|direction": registered["BTCUSDT|direction"],
        "BTCUSDT|level_up": registered["BTCUSDT|level_up"] + 1,
    }
    decisions = partition_metadata(changed["training"], "champion_models")
    assert decisions["BTCUSDT|direction"]["summary"][0]["decision"] == "kept"
    assert decisions["BTCUSDT|level_up"]["summary"][0]["decision"] in ("promoted", "rejected")  # a new version, judged


def test_a_changed_promotion_alpha_judges_again_without_retraining(project):
    """Promotion kept its last decision whenever no version was newer: a changed ITFF_PROMOTION_ALPHA (which the
    study fingerprint rightly ignores) printed "kept" with the old alpha's reasons."""
    run, _runs, client = project
    registered = versions(client)
    changed = run(ITFF_LABEL_BARRIER_ATR="1.5", ITFF_PROMOTION_ALPHA="0.01")  # the barrier as the test before left it

    assert all(r["reused"] for r in summary_rows(changed["training"]))
    assert versions(client) == registered
    decisions = partition_metadata(changed["training"], "champion_models")
    # direction's version was judged (and left without a champion) under alpha 0.05: it is judged again under 0.01.
    # (A model whose champion is its newest version has nothing to judge, whatever the alpha.)
    direction = decisions["BTCUSDT|direction"]["summary"][0]
    assert direction["decision"] != "kept" and "alpha 0.01" in " ".join(direction["reasons"]), direction
