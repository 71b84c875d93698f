"""What the Dagster UI reads, asked through its own GraphQL API (in process, on the runs of test_training_assets'
single-run backfills): each partition's own figures, the named jobs under the one code location, owners,
descriptions and check statuses."""

import json
from pathlib import Path

import pytest
from dagster._core.remote_origin import InProcessCodeLocationOrigin
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget
from dagster_graphql.test.utils import execute_dagster_graphql

from itff_platform.cli_runs import CODE_LOCATION, MODULE, PROJECT_ROOT
from itff_platform.lake.delta import read_rows
from itff_platform.lake.layers import LakeTables
from itff_platform_tests.defs.conftest import PARTITIONS

ROOT = Path(__file__).resolve().parents[2]
LAKE_PARTITIONS = [
    f"{month}|BTCUSDT" for month in ("2022-10-01", "2022-11-01", "2023-02-01", "2023-03-01", "2023-06-01")
]

MATERIALIZATIONS = """
query ($key: AssetKeyInput!, $partitions: [String!]) {
  assetOrError(assetKey: $key) { ... on Asset {
    assetMaterializations(partitions: $partitions) {
      partition runId
      metadataEntries { label
        ... on IntMetadataEntry { intValue } ... on FloatMetadataEntry { floatValue }
        ... on TextMetadataEntry { text } ... on JsonMetadataEntry { jsonString } ... on MarkdownMetadataEntry { mdStr } }
    } } } }"""
RUN = "query ($id: ID!) { runOrError(runId: $id) { ... on Run { jobName repositoryOrigin { repositoryLocationName repositoryName } } } }"
NODES = """{ assetNodes { assetKey { path } description
  owners { ... on TeamAssetOwner { team } ... on UserAssetOwner { email } }
  assetChecksOrError { ... on AssetChecks { checks { name description executionForLatestMaterialization { status } } } } } }"""
JOBS = "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } jobs { name description } } } } }"


@pytest.fixture(scope="module")
def graphql(backfill):
    instance = backfill[0]
    origin = InProcessCodeLocationOrigin(
        LoadableTargetOrigin(module_name=MODULE, working_directory=str(PROJECT_ROOT)), location_name=CODE_LOCATION
    )
    with WorkspaceProcessContext(instance, InProcessWorkspaceLoadTarget([origin])) as workspace:

        def ask(query: str, **variables) -> dict:
            result = execute_dagster_graphql(workspace.create_request_context(), query, variables)
            assert not result.errors, result.errors
            return result.data

        yield ask


def latest_by_partition(ask, asset: str, partitions: list[str]) -> dict[str, dict]:
    """Each partition's newest materialization: its metadata (label -> value) and run id."""
    events = ask(MATERIALIZATIONS, key={"path": [asset]}, partitions=partitions)["assetOrError"][
        "assetMaterializations"
    ]
    latest = {}
    for event in events:  # newest first
        if event["partition"] not in latest:
            values = {
                e["label"]: next((v for k, v in e.items() if k != "label"), None) for e in event["metadataEntries"]
            }
            latest[event["partition"]] = {"run_id": event["runId"], **values}
    return latest


def test_each_partition_of_a_single_run_backfill_carries_its_own_figures_through_graphql(backfill, graphql):
    _, settings, _ = backfill
    silver = read_rows(LakeTables.under(settings).silver, "1h")
    rows = {f"{month}|{symbol}": n for symbol, month, n in silver.group_by("symbol", "month").len().iter_rows()}

    latest = latest_by_partition(graphql, "silver_features", LAKE_PARTITIONS)
    assert {p: latest[p]["dagster/row_count"] for p in LAKE_PARTITIONS} == {p: rows[p] for p in LAKE_PARTITIONS}
    assert len({latest[p]["dagster/row_count"] for p in LAKE_PARTITIONS}) > 1  # a run-wide figure could not pass
    assert len({latest[p]["run_id"] for p in LAKE_PARTITIONS}) == 1  # and they all came from one run
    assert all(
        latest[p]["dagster/uri"] == Path(settings.lake.root / "silver" / "features").resolve().as_uri()
        for p in LAKE_PARTITIONS
    )

    bronze = latest_by_partition(graphql, "bronze_candles", LAKE_PARTITIONS)
    for p in LAKE_PARTITIONS:
        meta = bronze[p]
        assert (
            meta["raw_rows"]
            == meta["dagster/row_count"] + meta["quarantined_rows"] + meta["collapsed_exact_duplicates"]
        ), p
    assert (
        bronze["2023-03-01|BTCUSDT"]["quarantined_rows"] == 1 and bronze["2023-02-01|BTCUSDT"]["quarantined_rows"] == 0
    )

    trained = latest_by_partition(graphql, "trained_models", PARTITIONS)
    for partition in PARTITIONS:
        symbol, target = partition.split("|")
        summary = json.loads(trained[partition]["summary"])
        assert {(r["symbol"], r["target"]) for r in summary} == {(symbol, target)}
        logistic = next(r for r in summary if r["family"] == "logistic")
        assert (
            trained[partition]["best_family"] == "logistic"
            and trained[partition]["best_log_loss"] == logistic["log_loss"]
        )
    assert trained[PARTITIONS[0]]["best_log_loss"] != trained[PARTITIONS[1]]["best_log_loss"]

    champions = latest_by_partition(graphql, "champion_models", PARTITIONS)
    for partition in PARTITIONS:
        assert [r["model"] for r in json.loads(champions[partition]["summary"])] == [
            f"itff-{partition.replace('|', '-')}"
        ]

    for run_id, job in (
        (latest[LAKE_PARTITIONS[0]]["run_id"], "lake_job"),
        (trained[PARTITIONS[0]]["run_id"], "training_job"),
    ):
        run = graphql(RUN, id=run_id)["runOrError"]
        assert run["jobName"] == job  # not __ephemeral_asset_job__
        assert run["repositoryOrigin"] == {"repositoryLocationName": CODE_LOCATION, "repositoryName": "__repository__"}


def test_assets_jobs_and_checks_show_owners_descriptions_and_expected_outcomes_pass(graphql):
    nodes = graphql(NODES)["assetNodes"]
    assert nodes and all(n["owners"] == [{"team": "itff"}] and n["description"] for n in nodes), [
        n["assetKey"]["path"] for n in nodes if not (n["owners"] and n["description"])
    ]
    checks = {(n["assetKey"]["path"][0], c["name"]): c for n in nodes for c in n["assetChecksOrError"]["checks"]}
    assert all(c["description"] for c in checks.values()), [k for k, c in checks.items() if not c["description"]]
    # The backfill spans the 2023-03-24 outage: a gap on record, so the check reads "succeeded", not "failed".
    assert (
        checks[("bronze_candles", "no_unexpected_gaps")]["executionForLatestMaterialization"]["status"] == "SUCCEEDED"
    )

    (repository,) = graphql(JOBS)["repositoriesOrError"]["nodes"]
    assert repository["location"]["name"] == CODE_LOCATION
    jobs = {j["name"]: j["description"] for j in repository["jobs"] if not j["name"].startswith("__")}
    assert set(jobs) == {
        "lake_job",
        "training_job",
        "promotion_job",
        "evaluation_job",
        "lake_maintenance_job",
        "autopilot_job",
        "paper_performance_job",
    }
    assert all(jobs.values())


def test_workspace_and_pyproject_name_the_code_location_as_the_cli_runs_record_it():
    import tomllib

    import yaml

    (entry,) = yaml.safe_load((ROOT / "workspace.yaml").read_text())["load_from"]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["dagster"]
    assert entry["python_module"]["location_name"] == pyproject["code_location_name"] == CODE_LOCATION
    assert entry["python_module"]["module_name"] == pyproject["module_name"] == MODULE
