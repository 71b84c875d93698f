"""The Dagster UI as a user sees it: a real dagster-webserver, rendered by headless Chromium (installed by `make test`)."""

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

from itff_platform_tests.conftest import free_port

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
    env = {**os.environ, "DAGSTER_HOME": str(home), "ITFF_HOME": str(folder / "itff")}
    log_path = folder / "dagster-webserver.log"
    log_file = open(log_path, "w")  # noqa: SIM115  a file, not a pipe: nobody drains a pipe, and a full one blocks the server
    port = free_port()
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
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
                groups = sorted({f"{prefix}:{n['groupName']}" for n in nodes for prefix in
                                 ("global@global", f"{n['repository']['name']}@{n['repository']['location']['name']}")})
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
        pytest.fail("chromium is not on PATH: `make test` installs it (Makefile target `browser`, Debian package chromium)")
    return lambda *args: chromium(binary, tmp_path / "chromium-profile", *args)


def chromium(binary: str, profile: Path, *args: str) -> str:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
             "--disable-component-update", "--disable-default-apps", "--disable-sync", "--no-first-run",
             "--metrics-recording-only", "--window-size=1600,1000", f"--user-data-dir={profile}",
             # Virtual time stands still while the GraphQL requests are in flight, then runs the React render out.
             "--virtual-time-budget=15000"]
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
