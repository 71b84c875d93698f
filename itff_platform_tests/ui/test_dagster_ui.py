"""The UIs as a user sees them: a real dagster-webserver, `mlflow ui` and `bentoml serve`, rendered by headless Chromium
(installed by `make test`). The screenshots land in test-artifacts/; `make screenshots` copies them to docs/images/ for
the README's tour."""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from dagster import DagsterInstance

import mlflow
from itff_platform.cli_runs import execute_job
from itff_platform_tests.conftest import free_port
from itff_platform_tests.faults.test_service_faults import wait_ready
from itff_platform_tests.serving.test_service import TOKEN, promoted_registry, start_service

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
GROUPS = "{ assetNodes { groupName repository { name location { name } } } }"
# prediction_outcomes is drawn shortened ("predicti…_outcomes") at this zoom, so it is not asserted by name.
ASSETS = ["raw_candles", "bronze_candles", "silver_features", "trained_models", "champion_models", "drift_monitor"]


@pytest.fixture(scope="module")
def webserver(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dagster-ui")
    home = folder / "dagster_home"
    home.mkdir()
    # Not the repo's dagster.yaml: its relative storage paths (.dagster/...) would land in the real run history.
    # Without them, everything lives in this DAGSTER_HOME. nux off: the "Join the Dagster community" modal would cover the page.
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\nnux:\n  enabled: false\n")
    # Two months of BTCUSDT's lake in this instance, so a partitioned asset's page shows materialized partitions.
    with DagsterInstance.local_temp(str(home)) as instance:
        built = execute_job(
            "lake_job",
            instance,
            partition_range=("2024-07-01|BTCUSDT", "2024-08-01|BTCUSDT"),
            run_config={"resources": {"itff": {"config": {"lake_dir": str(folder / "itff" / "data_lake")}}}},
        )
        assert built.success
    env = {**os.environ, "DAGSTER_HOME": str(home), "ITFF_HOME": str(folder / "itff")}
    log_path = folder / "dagster-webserver.log"
    log_file = open(log_path, "w")  # noqa: SIM115  a file, not a pipe: nobody drains a pipe, and a full one blocks the server
    port = free_port()
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "dagster-webserver"),
            "-w",
            "workspace.yaml",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        cwd=ROOT,
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so the teardown also stops the code server it spawns
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90  # dagster's imports and the code server are slow on a shared CPU
        while time.time() < deadline and process.poll() is None:
            try:
                # server_info can answer before the code location has loaded; the asset nodes only after.
                nodes = httpx.post(f"{url}/graphql", json={"query": GROUPS}, timeout=5).json()["data"]["assetNodes"]
                # A group's id in the graph: global@global:<group>, or per code location behind a feature flag.
                groups = sorted(
                    {
                        f"{prefix}:{n['groupName']}"
                        for n in nodes
                        for prefix in (
                            "global@global",
                            f"{n['repository']['name']}@{n['repository']['location']['name']}",
                        )
                    }
                )
                if groups:
                    break
            except (httpx.HTTPError, KeyError, TypeError, ValueError):
                pass
            time.sleep(1)
        else:
            pytest.fail("dagster-webserver did not serve the assets:\n" + log_path.read_text()[-3000:])
        yield url, groups
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # whatever of the group outlived the webserver
            log_file.close()


@pytest.fixture
def browser(tmp_path):
    """A function running headless Chromium with its own throwaway profile. Fails, not skips: CI installs it via `make test`."""
    binary = shutil.which("chromium")
    if binary is None:
        pytest.fail(
            "chromium is not on PATH: `make test` installs it (Makefile target `browser`, Debian package chromium)"
        )
    return lambda *args: chromium(binary, tmp_path / "chromium-profile", *args)


def chromium(binary: str, profile: Path, *args: str) -> str:
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-sync",
        "--no-first-run",
        "--metrics-recording-only",
        "--window-size=1600,1000",
        f"--user-data-dir={profile}",
        # Virtual time stands still while the GraphQL requests are in flight, then runs the React render out.
        "--virtual-time-budget=15000",
    ]
    done = subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, f"chromium {args} exited {done.returncode}:\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.timeout(240)
def test_the_asset_lineage_page_renders_every_platform_asset(browser, webserver):
    url, groups = webserver
    # The global lineage collapses groups into boxes; `expanded` opens them, so each asset is drawn as its own node.
    lineage = f"{url}/asset-groups?expanded=" + ",".join(groups)
    dom = browser("--dump-dom", lineage)
    missing = [name for name in ASSETS if name not in dom]
    assert not missing, f"{missing} not in the rendered lineage page ({len(dom)} chars of DOM)"

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "dagster-asset-graph.png"
    screenshot.unlink(missing_ok=True)
    browser(f"--screenshot={screenshot}", lineage)
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and screenshot.stat().st_size > 10_000


def screenshot(browser, name: str, url: str) -> Path:
    """A PNG of the page in test-artifacts/, for the README's tour (`make screenshots`)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    path.unlink(missing_ok=True)
    browser(f"--screenshot={path}", url)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000, name
    return path


@pytest.mark.timeout(120)
def test_a_partitioned_assets_page_shows_its_materialized_partitions(browser, webserver):
    url, _ = webserver
    page = f"{url}/assets/silver_features?view=partitions"
    dom = browser("--dump-dom", page)
    assert "silver_features" in dom and "BTCUSDT" in dom, (
        f"the partitions page did not render ({len(dom)} chars of DOM)"
    )
    screenshot(browser, "dagster-silver-partitions.png", page)


@pytest.fixture(scope="module")
def registry_uis(tmp_path_factory):
    """One training run with a promoted champion, shown by `mlflow ui` and served by `bentoml serve`: (mlflow url, service url)."""
    folder = tmp_path_factory.mktemp("registry-uis")
    settings = promoted_registry(folder)
    port = free_port()
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    log_file = open(folder / "mlflow-ui.log", "w")  # noqa: SIM115 (a file, not a pipe: nobody drains a pipe; closed at teardown)
    ui = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "ui",
            "--workers",
            "1",
            "--backend-store-uri",
            settings.tracking_uri,
            "--default-artifact-root",
            settings.artifact_location,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=folder,
        env={**inherited, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    service, service_url, service_log = start_service(
        folder, {"ITFF_API_TOKENS": f'["{TOKEN}"]', "ITFF_SERVE_WORKERS": "1"}
    )
    mlflow_url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(mlflow_url, ui, folder / "mlflow-ui.log", probe="/health", what="mlflow ui")
        yield mlflow_url, service_url
    finally:
        os.killpg(ui.pid, signal.SIGTERM)  # its group: mlflow ui runs its server in a child process
        service.terminate()
        for process in (ui, service):
            process.wait(timeout=30)
        log_file.close()
        service_log.close()


@pytest.mark.timeout(300)
def test_mlflow_shows_the_studies_and_the_champion_and_the_service_its_swagger_page(browser, registry_uis):
    mlflow_url, service_url = registry_uis
    experiment = mlflow.get_experiment_by_name("itff-PROMOUSDT-direction")  # one experiment per symbol x target
    # The runs page, not the experiment's overview: MLflow 3.17 opens an experiment on its GenAI traces overview.
    runs = f"{mlflow_url}/#/experiments/{experiment.experiment_id}/runs"
    assert "logistic" in browser("--dump-dom", runs)
    screenshot(browser, "mlflow-experiments.png", runs)
    # The registered model's page: its versions, their tags and the champion alias (the list page opens on a promo modal).
    model = f"{mlflow_url}/#/models/itff-PROMOUSDT-direction"
    assert "champion" in browser("--dump-dom", model)
    screenshot(browser, "mlflow-registry.png", model)
    swagger = f"{service_url}/"
    assert "/predict" in browser("--dump-dom", swagger)
    screenshot(browser, "service-docs.png", swagger)
