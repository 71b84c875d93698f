import subprocess
import sys
from pathlib import Path

from dagster import AssetKey, BackfillPolicy, Definitions

from itff_platform.definitions import defs

ROOT = Path(__file__).resolve().parents[2]


def test_definitions_load_and_validate():
    Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == {
        "raw_candles",
        "bronze_candles",
        "silver_features",
        "trained_models",
        "champion_models",
        "prediction_outcomes",
        "drift_monitor",
        "lake_maintenance",
        "paper_performance",
    }
    assert {j.name for j in defs.resolve_all_job_defs()} >= {
        "lake_job",
        "training_job",
        "evaluation_job",
        "lake_maintenance_job",
        "paper_performance_job",
        "autopilot_job",
    }


def test_training_is_partitioned_by_symbol_and_target_and_reads_all_of_silver():
    graph = defs.resolve_asset_graph()
    node = graph.get(AssetKey("trained_models"))
    assert node.partitions_def.get_partition_keys() == [
        f"{s}|{t}" for s in ("BTCUSDT", "ETHUSDT") for t in ("direction", "level_up", "forward_return")
    ]
    assert AssetKey("silver_features") in node.parent_keys


def test_lake_assets_are_symbol_by_month_with_single_run_backfills():
    graph = defs.resolve_asset_graph()
    for name in ("raw_candles", "bronze_candles", "silver_features"):
        node = graph.get(AssetKey(name))
        keys = node.partitions_def.get_partition_keys()
        assert len(keys) == 2 * 42  # BTCUSDT, ETHUSDT x 2021-04 .. 2024-09
        assert node.backfill_policy == BackfillPolicy.single_run()


def test_bad_data_checks_block_downstream_and_gaps_only_warn():
    from itff_platform.definitions import lake

    specs = {(s.asset_key.to_user_string(), s.name): s for asset in lake for s in asset.check_specs}
    for name in (
        "no_duplicate_timestamps",
        "ohlc_consistent",
        "positive_prices_and_volumes",
        "counts_reconcile",
        "bronze_schema",
    ):
        assert specs[("bronze_candles", name)].blocking, name
    assert not specs[("bronze_candles", "no_unexpected_gaps")].blocking
    assert specs[("silver_features", "silver_schema")].blocking


def test_dagster_cli_loads_the_workspace():
    result = subprocess.run(
        [str(Path(sys.executable).parent / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
