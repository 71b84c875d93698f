"""trained_models and champion_models materialized for two partitions in one run (a single-run backfill), read back
through the instance the Dagster UI reads, and their MLflow links followed on a real `mlflow ui`."""

import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest
from dagster import AssetKey, AssetRecordsFilter, DagsterInstance

from itff_platform_tests.defs.conftest import PARTITIONS
from mlflow import MlflowClient

LINK = re.compile(r"\[(\w+)\]\((http://[^/]+)/#/experiments/(\d+)/runs/(\w+)\)")


def latest_metadata(instance: DagsterInstance, asset: str, partition: str) -> dict:
    (record,) = instance.fetch_materializations(
        AssetRecordsFilter(asset_key=AssetKey(asset), asset_partitions=[partition]), limit=1
    ).records
    return {k: v.value for k, v in record.asset_materialization.metadata.items()}


def test_each_partition_of_a_single_run_backfill_shows_its_own_studies(backfill):
    instance, settings, _ = backfill
    best = {}
    for partition in PARTITIONS:
        symbol, target = partition.split("|")
        meta = latest_metadata(instance, "trained_models", partition)
        assert {(row["symbol"], row["target"]) for row in meta["summary"]} == {(symbol, target)}
        assert {row["family"] for row in meta["summary"]} == {"baseline_majority", "baseline_persistence", "logistic"}
        logistic = next(row for row in meta["summary"] if row["family"] == "logistic")
        assert meta["best_family"] == "logistic" and meta["best_log_loss"] == logistic["log_loss"]
        assert 0.5 < meta["best_log_loss"] < 0.8
        best[partition] = meta["best_log_loss"], logistic["run_id"]
    assert best[PARTITIONS[0]] != best[PARTITIONS[1]]

    for partition in PARTITIONS:
        decision = latest_metadata(instance, "champion_models", partition)
        assert [row["model"] for row in decision["summary"]] == [f"itff-{partition.replace('|', '-')}"]

    version = MlflowClient(settings.tracking_uri).get_model_version("itff-BTCUSDT-direction", "1")
    assert version.tags["family"] == "logistic"
    run = MlflowClient(settings.tracking_uri).get_run(version.run_id)
    assert int(run.data.tags["delta_version.silver"]) >= 0  # the lake version this model was trained on
    (dataset,) = run.inputs.dataset_inputs  # the same version on the run page's Datasets
    assert {t.key: t.value for t in dataset.tags}["delta_version"] == run.data.tags["delta_version.silver"]


def test_every_study_plot_renders_as_an_image_on_its_partition(backfill):
    instance, _, _ = backfill
    for partition in PARTITIONS:
        symbol, target = partition.split("|")
        meta = latest_metadata(instance, "trained_models", partition)
        for family in ("baseline_majority", "baseline_persistence", "logistic"):
            for figure in ("reliability", "threshold_sweep", "equity"):
                image = meta[f"plot: {family} {figure}"]
                assert image.startswith(f"![{symbol}-{target}-{family}-{figure}](data:image/png;base64,"), (
                    partition,
                    family,
                    figure,
                )
        assert meta["reliability_of_best"].startswith(
            f"![{symbol}-{target}-logistic-reliability](data:image/png;base64,"
        )


@pytest.fixture(scope="module")
def mlflow_ui(backfill):
    _, settings, ui_url = backfill
    port = ui_url.rsplit(":", 1)[1]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "ui",
            "--backend-store-uri",
            settings.tracking_uri,
            "--host",
            "127.0.0.1",
            "--port",
            port,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # its own process group: the server's workers stop with it
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{ui_url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "mlflow ui did not start"
            time.sleep(0.5)
        yield ui_url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a busy machine: stop waiting for a graceful shutdown
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)


def test_every_mlflow_link_names_the_runs_own_experiment_on_a_running_mlflow_ui(backfill, mlflow_ui):
    instance, _, _ = backfill
    assert httpx.get(mlflow_ui).status_code == 200  # the single-page app the links open
    for partition in PARTITIONS:
        meta = latest_metadata(instance, "trained_models", partition)
        links = LINK.findall(meta["mlflow_runs"])
        assert len(links) == len(meta["summary"]) == 3
        for text, base, experiment, run_id in links:
            assert base == mlflow_ui and text == run_id
            # The UI routes /#/experiments/<experiment>/runs/<run>; the run must live in that experiment.
            run = httpx.get(f"{mlflow_ui}/api/2.0/mlflow/runs/get", params={"run_id": run_id}).json()["run"]
            assert run["info"]["experiment_id"] == experiment
            assert (
                run["data"]["tags"]
                and {t["key"]: t["value"] for t in run["data"]["tags"]}["target"] == partition.split("|")[1]
            )
        assert meta["mlflow_experiment"] == f"{mlflow_ui}/#/experiments/{experiment}"
