"""`make dev` as a user runs it (issue 11, items 9, 14 and 15), started once: scripts/dev.sh brings up Dagster,
the MLflow UI, the BentoML service and optuna-dashboard; the dashboard, rendered by headless Chromium, lists the
studies of a training run; the token in .dev-logs/api-token is the one the service accepts; and SIGTERM stops all
of it within 5 s, leaving no process behind."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import optuna
import pytest

import mlflow
from itff_platform.settings import Settings
from itff_platform_tests.conftest import free_port
from itff_platform_tests.training.test_promotion import train
from itff_platform_tests.ui.test_dagster_ui import ROOT, browser  # noqa: F401  (the fixture)

SERVICES = ("DAGSTER_PORT", "MLFLOW_PORT", "PORT", "OPTUNA_DASHBOARD_PORT")
ASSETS = "{ assetNodes { id } }"


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def marked(marker: str) -> list[str]:
    """The processes carrying this test's marker in their environment: everything dev.sh started, at any depth."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker.encode() in (entry / "environ").read_bytes():
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                found.append(f"{entry.name} {command[:150]}")
        except OSError:
            continue
    return found


def dagster_loaded(port: int) -> bool:
    """The code location has loaded (the webserver answers before it does)."""
    try:
        answer = httpx.post(f"http://127.0.0.1:{port}/graphql", json={"query": ASSETS}, timeout=5)
        return bool(answer.json()["data"]["assetNodes"])
    except (httpx.HTTPError, KeyError, TypeError, ValueError):
        return False


@pytest.fixture
def dev(tmp_path):
    """scripts/dev.sh over a project home holding one training run's MLflow runs and Optuna studies."""
    home = tmp_path / "itff"
    settings = Settings(home=home, symbols=["PROMOUSDT"], targets=["direction"], trials=1, wf_folds=3)
    mlflow.set_tracking_uri(settings.tracking_uri)
    train(settings, ["logistic"], noise=0.2)
    studies = [s.study_name for s in optuna.get_all_study_summaries(settings.study_storage)]
    # The project's dagster.yaml (its run launcher, run monitoring and retries), with its storage in this test's folder.
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text(
        (ROOT / "dagster.yaml").read_text().replace("base_dir: .dagster", f"base_dir: {dagster_home}/.dagster")
    )
    ports = {name: free_port() for name in SERVICES}
    marker = f"ITFF_DEV_TEST={uuid.uuid4().hex}"
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "ITFF_"))}
    env = {
        **inherited,
        **{k: str(v) for k, v in ports.items()},
        "ITFF_HOME": str(home),
        "DAGSTER_HOME": str(dagster_home),
        "ITFF_SYMBOLS": '["PROMOUSDT"]',
        "ITFF_TARGETS": '["direction"]',
        "VENV_BIN": str(Path(sys.executable).parent),
        "ITFF_DEV_TEST": marker.split("=")[1],
    }
    output = tmp_path / "make-dev.out"
    with open(output, "w") as out:  # a file, not a pipe: nobody drains a pipe, and a full one blocks the script
        # Its own session, as a terminal gives `make dev`; the signal goes to the script alone, as `kill PID` does.
        process = subprocess.Popen(
            ["bash", "scripts/dev.sh"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.time() + 240  # dagster dev, the MLflow UI and BentoML start together on a shared CPU
        while not (all(listening(port) for port in ports.values()) and dagster_loaded(ports["DAGSTER_PORT"])):
            if process.poll() is not None or time.time() > deadline:
                pytest.fail(f"make dev did not come up (exit {process.poll()}):\n{output.read_text()[-4000:]}")
            time.sleep(1)
        yield process, ports, home, studies, output, marker
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        for line in marked(marker):  # the test failed: leave nothing running
            os.kill(int(line.split()[0]), signal.SIGKILL)


@pytest.mark.timeout(420)
def test_make_dev_serves_the_studies_and_one_token_and_stops_within_5_s_on_sigterm(dev, browser):  # noqa: F811
    process, ports, home, studies, output, marker = dev
    # optuna-dashboard lists the training run's studies, in the page a user opens.
    assert studies
    dom = browser("--dump-dom", f"http://127.0.0.1:{ports['OPTUNA_DASHBOARD_PORT']}/dashboard")
    assert all(name in dom for name in studies), f"{studies} not in the dashboard's page ({len(dom)} chars of DOM)"

    # One token story: the printed token is in .dev-logs/api-token, for this user only, and the service accepts it.
    token_file = home / ".dev-logs" / "api-token"
    token = token_file.read_text().strip()
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert re.search(rf"X-API-Token: {re.escape(token)} \(also in \.dev-logs/api-token\)", output.read_text())
    predict = f"http://127.0.0.1:{ports['PORT']}/predict"
    assert httpx.post(predict, json={}, headers={"X-API-Token": "not-the-token"}, timeout=10).status_code == 401
    assert httpx.post(predict, json={}, headers={"X-API-Token": token}, timeout=10).status_code not in (401, 403, 429)

    # Once all four listen, the addresses again (Procfile.dev's `ready`), waiting on the ports make dev was given.
    deadline = time.time() + 60
    while "All four are up." not in output.read_text() and time.time() < deadline:
        time.sleep(0.5)
    assert "All four are up." in output.read_text(), output.read_text()[-3000:]

    running = marked(marker)
    assert len(running) >= 5, running  # dagster dev, its webserver, daemon and code server, the others
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)
    took = time.monotonic() - started
    left = marked(marker)
    assert took < 5, f"make dev took {took:.1f} s to stop on SIGTERM"
    assert left == [], f"left running after make dev stopped: {left}"
    assert process.returncode == 143
