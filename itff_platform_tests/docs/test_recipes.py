"""docs/extend.md, followed as written: each recipe's code blocks are read from the page and applied (to a scratch copy
of the package where a recipe edits code), then the result is checked the cheap way that still proves it works."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import polars as pl
import pytest
from deltalake import DeltaTable

from itff_platform.lake.delta import read_rows
from itff_platform.lake.layers import LakeTables
from itff_platform.settings import Settings
from itff_platform_tests.conftest import utc
from itff_platform_tests.market.binance_wire import FakeBinance
from itff_platform_tests.serving.test_service import TOKEN, start_service

ROOT = Path(__file__).resolve().parents[2]
PAGE = ROOT / "docs" / "extend.md"
ITFF = Path(sys.executable).parent / "itff"
STEP = re.compile(r"<!-- recipe: (.+?) -->\n```[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
WHERE = re.compile(r'(\S+) (before|after) "((?:[^"\\]|\\.)*)"$')
AUGUST = ("2024-08-01", "2024-09-01")  # one month keeps each lake run short


@dataclass
class Step:
    action: str  # run, file, append, before, after
    path: str | None
    anchor: str | None
    code: str


def recipe(title: str) -> list[Step]:
    """The steps of the recipe under `## title`, in page order."""
    sections = re.split(r"^## ", PAGE.read_text(), flags=re.MULTILINE)
    body = next(s for s in sections if s.startswith(title + "\n"))
    steps = []
    for how, code in STEP.findall(body):
        if how == "run":
            steps.append(Step("run", None, None, code))
        elif how.startswith("file "):
            steps.append(Step("file", how.removeprefix("file "), None, code))
        elif how.endswith(" append"):
            steps.append(Step("append", how.removesuffix(" append"), None, code))
        else:
            path, side, anchor = WHERE.match(how).groups()
            steps.append(Step(side, path, anchor.replace('\\"', '"'), code))
    assert steps, f"no recipe steps under '## {title}' in {PAGE.name}"
    return steps


def apply(steps: list[Step], tree: Path) -> None:
    """The code steps, applied to the files under `tree`; an anchor must name exactly one line."""
    for step in steps:
        if step.action in ("run", "file"):
            continue
        file = tree / step.path
        text = file.read_text()
        if step.action == "append":
            file.write_text(text + step.code)
            continue
        lines = text.splitlines(keepends=True)
        hits = [i for i, line in enumerate(lines) if line.startswith(step.anchor)]
        assert len(hits) == 1, (
            f"{step.path}: {len(hits)} lines begin with {step.anchor!r}; the recipe no longer matches"
        )
        at = hits[0] + (step.action == "after")
        file.write_text("".join(lines[:at]) + step.code + "".join(lines[at:]))


def scratch_copy(tmp_path: Path) -> Path:
    tree = tmp_path / "repo"
    shutil.copytree(ROOT / "itff_platform", tree / "itff_platform", ignore=shutil.ignore_patterns("__pycache__"))
    return tree


def run_commands(steps: list[Step], home: Path, env: dict[str, str]) -> dict[str, str]:
    """Each `run` block: its exports set the environment, its `.venv/bin/itff` lines run, in `home`."""
    for step in (s for s in steps if s.action == "run"):
        for line in step.code.splitlines():
            words = shlex.split(line)
            if words[:1] == ["export"]:
                name, _, value = words[1].partition("=")
                env[name] = value
            elif words[:1] == [".venv/bin/itff"]:
                done = subprocess.run(
                    [str(ITFF), *words[1:]], cwd=home, env=env, capture_output=True, text=True, timeout=300, check=False
                )
                assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return env


def project(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """An empty project folder (the CLI needs its dagster.yaml) and the environment of a one-month lake there."""
    home = tmp_path / "project"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home)
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("ITFF_", "MLFLOW_", "DAGSTER_"))}
    return home, {**inherited, "ITFF_HOME": str(home), "ITFF_START_DATE": AUGUST[0], "ITFF_END_DATE": AUGUST[1]}


@pytest.mark.timeout(180)
def test_add_a_symbol_builds_its_lake_partitions_from_the_exchange(tmp_path, btc_hourly):
    steps = recipe("Add a symbol")
    home, env = project(tmp_path)
    august = btc_hourly.filter(pl.col("timestamp").is_between(utc(2024, 8, 1), utc(2024, 9, 1), closed="left"))
    with FakeBinance({symbol: btc_hourly for symbol in ("BTCUSDT", "ETHUSDT", "SOLUSDT")}) as exchange:
        env.update(ITFF_BINANCE_BASE_URL=exchange.url, ITFF_BINANCE_ARCHIVE_URL=exchange.url)
        env = run_commands(steps, home, env)
    assert env["ITFF_SOURCE"] == "binance" and "SOLUSDT" in json.loads(env["ITFF_SYMBOLS"])
    silver = read_rows(LakeTables.under(Settings(home=home)).silver, "1h", "SOLUSDT")
    assert silver.height == august.height and silver["month"].unique().to_list() == [utc(2024, 8, 1).date()]


@pytest.mark.timeout(180)
def test_your_own_csv_passes_validation_into_bronze(tmp_path):
    steps = recipe("Bring your own data")
    home, env = project(tmp_path)
    written = [s for s in steps if s.action == "file"]
    for step in written:
        (home / step.path).parent.mkdir(parents=True, exist_ok=True)
        (home / step.path).write_text(step.code)
    run_commands(steps, home, env)
    tables = LakeTables.under(Settings(home=home))
    bronze = read_rows(tables.bronze, "1h", "SOLUSDT")
    sent = pl.read_csv(home / written[0].path, try_parse_dates=True)
    assert bronze.height == sent.height and bronze["close"].to_list() == sent["close"].to_list()
    assert not DeltaTable.is_deltatable(tables.quarantine) or read_rows(tables.quarantine, "1h", "SOLUSDT").is_empty()
    assert not (home / "data_lake" / "drop" / "rejected").exists()


@pytest.mark.timeout(240)
def test_a_new_endpoint_is_refused_without_a_token_answers_with_one_and_is_documented(tmp_path):
    tree = scratch_copy(tmp_path)
    apply(recipe("Add an endpoint"), tree)
    home = tmp_path / "home"
    home.mkdir()
    env = {"ITFF_API_TOKENS": json.dumps([TOKEN]), "ITFF_SERVE_WORKERS": "1", "PYTHONPATH": str(tree)}
    process, url, log_file = start_service(home, env, code=tree)
    try:
        assert httpx.post(f"{url}/served_versions", json={}, timeout=30).status_code == 401
        answer = httpx.post(f"{url}/served_versions", json={}, headers={"X-API-Token": TOKEN}, timeout=30)
        assert answer.status_code == 200 and answer.json() == {"models": {}}  # no champion in this registry
        operation = httpx.get(f"{url}/docs.json", timeout=30).json()["paths"]["/served_versions"]["post"]
        assert operation["security"] == [{"ApiToken": []}]
        assert operation["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
            "/ServedVersions"
        )
        assert "401" in operation["responses"]
    finally:
        process.terminate()
        process.wait(timeout=30)
        log_file.close()


CHECK_THE_DRIFT_CHECK = """
from datetime import datetime, timezone

import polars as pl

from itff_platform.defs.monitoring_assets import _check_results
from itff_platform.definitions import defs
from itff_platform.monitoring.drift import volume_shift
from itff_platform.monitoring.evaluation import Evaluation
from itff_platform.settings import Settings

reference = pl.DataFrame({"volume": [100.0] * 48})
assert volume_shift(reference, pl.DataFrame({"volume": [90.0, 110.0] * 12}))["status"] == "ok"
dried_up = volume_shift(reference, pl.DataFrame({"volume": [20.0] * 24}))
assert dried_up == {"factor": 5.0, "status": "error"}, dried_up
result = Evaluation(as_of=datetime.now(timezone.utc))
result.volume = {"SOLUSDT": dried_up}
check = {c.check_name: c for c in _check_results(Settings(), result, pl.DataFrame())}["volume_shift"]
assert not check.passed and check.metadata["SOLUSDT"].value == 5.0, check
specs = {key.name for key in defs.resolve_asset_graph().asset_check_keys if key.asset_key.to_user_string() == "drift_monitor"}
assert "volume_shift" in specs, specs
print("ok")
"""


@pytest.mark.timeout(120)
def test_a_new_drift_check_grades_a_small_frame_and_is_declared_on_drift_monitor(tmp_path):
    tree = scratch_copy(tmp_path)
    apply(recipe("Add a drift check"), tree)
    env = {**os.environ, "PYTHONPATH": str(tree), "ITFF_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", CHECK_THE_DRIFT_CHECK],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout[-3000:] + done.stderr[-3000:]
