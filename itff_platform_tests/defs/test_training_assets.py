import pytest
from dagster import DagsterInstance, MultiPartitionKey, materialize
from mlflow import MlflowClient

from itff_platform.definitions import lake, training
from itff_platform.defs.resources import ItffSettingsResource
from itff_platform.settings import Settings


@pytest.fixture
def small_budget(monkeypatch, tmp_path):
    monkeypatch.setenv("ITFF_MLFLOW_DIR", str(tmp_path / "mlflow"))
    monkeypatch.setenv("ITFF_FAMILIES", '["logistic"]')
    monkeypatch.setenv("ITFF_TRIALS", "1")
    monkeypatch.setenv("ITFF_WF_FOLDS", "2")
    return tmp_path


def test_trained_models_materializes_a_symbol_target_with_plots_and_links(small_budget):
    lake_dir = small_budget / "lake"
    resources = {"itff": ItffSettingsResource(lake_dir=str(lake_dir))}
    instance = DagsterInstance.ephemeral()
    built = materialize(lake, instance=instance, resources=resources,
                        tags={"dagster/asset_partition_range_start": "2022-10-01|BTCUSDT",
                              "dagster/asset_partition_range_end": "2023-06-01|BTCUSDT"})
    assert built.success
    result = materialize(training, instance=instance, resources=resources,
                         partition_key=MultiPartitionKey({"symbol": "BTCUSDT", "target": "direction"}))
    assert result.success
    (event,) = result.get_asset_materialization_events()
    meta = {k: v.value for k, v in event.materialization.metadata.items()}
    assert meta["best_family"] == "logistic" and 0.6 < meta["best_log_loss"] < 0.8
    assert meta["reliability_of_best"].startswith("![BTCUSDT-direction-logistic-reliability](data:image/png;base64,")
    assert "BTCUSDT/direction/logistic" in meta["mlflow_runs"]
    families = {row["family"] for row in meta["summary"]}
    assert families == {"baseline_majority", "baseline_persistence", "logistic"}

    settings = Settings(mlflow_dir=small_budget / "mlflow")
    (version,) = MlflowClient(settings.tracking_uri).search_model_versions("name = 'itff-BTCUSDT-direction'")
    assert version.tags["family"] == "logistic"
    run = MlflowClient(settings.tracking_uri).get_run(version.run_id)
    assert int(run.data.tags["delta_version.silver"]) >= 0  # the lake version this model was trained on
