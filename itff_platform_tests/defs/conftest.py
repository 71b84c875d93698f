"""The training backfill the training-asset and GraphQL tests read (one per session: it trains)."""

import pytest
from dagster import DagsterInstance

from itff_platform.cli_runs import execute_job
from itff_platform.settings import Settings
from itff_platform_tests.conftest import free_port

PARTITIONS = ["BTCUSDT|direction", "BTCUSDT|level_up"]


@pytest.fixture(scope="session")
def backfill(tmp_path_factory):
    """BTCUSDT's lake for 2022-10..2023-06, then trained_models and champion_models for PARTITIONS: each a
    single-run backfill of a named job. Shared by the training-asset and GraphQL tests."""
    home = tmp_path_factory.mktemp("training_assets")
    ui_url = f"http://127.0.0.1:{free_port()}"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ITFF_MLFLOW_DIR", str(home / "mlflow"))
        env.setenv("ITFF_MLFLOW_UI_URL", ui_url)
        env.setenv("ITFF_FAMILIES", '["logistic"]')
        env.setenv("ITFF_TRIALS", "1")
        env.setenv("ITFF_WF_FOLDS", "2")
        env.setenv("ITFF_MAX_ECE", "1")  # register whatever one trial gives: promotion needs a version per partition
        config = {"resources": {"itff": {"config": {"lake_dir": str(home / "lake")}}}}
        (home / "dagster_home").mkdir()
        instance = DagsterInstance.local_temp(str(home / "dagster_home"))  # on disk, as the UI's instance is
        # The named jobs, as the CLI and the sensors run them; each a single-run backfill over its partitions.
        built = execute_job(
            "lake_job", instance, partition_range=("2022-10-01|BTCUSDT", "2023-06-01|BTCUSDT"), run_config=config
        )
        assert built.success
        result = execute_job(
            "training_job", instance, partition_range=(PARTITIONS[0], PARTITIONS[-1]), run_config=config
        )
        assert result.success
    return instance, Settings(mlflow_dir=home / "mlflow", lake_dir=home / "lake"), ui_url
