"""Lake faults, each through real Dagster materializations on real Delta tables in a temp dir (issue 10, items 12-16).

12 one bad drop file stops every symbol    13 rows outside the lake's months vanish
14 a wrong symbol's prices are accepted    15 replaced files pile up (no vacuum)
16 silver left behind bronze
"""

import gzip
import os
import time

import polars as pl
import pytest
from dagster import AssetCheckSeverity, DagsterInstance, build_sensor_context, materialize

from itff_platform.definitions import defs, evaluation_job, lake, lake_job, maintenance, training_job
from itff_platform.defs.automation import automation
from itff_platform.defs.resources import ItffSettingsResource
from itff_platform.lake.delta import read_rows
from itff_platform.lake.layers import LakeTables
from itff_platform.lake.maintenance import directory_bytes
from itff_platform.settings import Settings
from itff_platform_tests.conftest import markdown_rows, utc

REPOSITORY = defs.get_repository_def()


def run(lake_dir, partition_key=None, tags=None, selection=None, assets=None, **resource):
    return materialize(
        assets or lake,
        partition_key=partition_key,
        tags=tags,
        selection=selection,
        instance=DagsterInstance.ephemeral(),
        resources={"itff": ItffSettingsResource(lake_dir=str(lake_dir), **resource)},
        raise_on_error=False,
    )


def months(first: str, last: str) -> dict[str, str]:
    return {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}


def meta(result, asset: str) -> dict:
    events = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == asset]
    return {k: v.value for k, v in events[0].materialization.metadata.items()}


def check(result, name: str):
    return next(e for e in result.get_asset_check_evaluations() if e.check_name == name)


def csv_text(candles: pl.DataFrame, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    return candles.with_columns(pl.col("timestamp").dt.strftime(fmt)).write_csv()


def month_of(candles: pl.DataFrame, month: str) -> pl.DataFrame:
    return candles.filter(pl.col("timestamp").dt.strftime("%Y-%m") == month)


@pytest.fixture(scope="module")
def eth_hourly():
    from itff_platform.market.sample import SampleCandleSource

    return SampleCandleSource().fetch("ETHUSDT", "1h", utc(2021, 1, 1), utc(2025, 1, 1))


# --- 12: one bad file -------------------------------------------------------------------------------------------------


def test_bad_files_are_set_aside_and_every_other_file_and_symbol_proceeds(tmp_path, btc_hourly, eth_hourly):
    """Before: the truncated gzip raised a bare EOFError in raw_candles and no symbol got bronze or silver."""
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "BTCUSDT-1h-2024-01.csv").write_text(csv_text(month_of(btc_hourly, "2024-01")))
    # ETH's January arrives in Central European Summer/Winter time, with its offset: read as UTC, not refused.
    (drop / "ETHUSDT-1h-2024-01.csv").write_text(
        csv_text(
            month_of(eth_hourly, "2024-01").with_columns(pl.col("timestamp").dt.convert_time_zone("Europe/Paris")),
            "%Y-%m-%d %H:%M:%S%:z",
        )
    )
    (drop / "ETHUSDT-1h-2024-01-extra.csv.gz").write_bytes(
        gzip.compress(csv_text(month_of(eth_hourly, "2024-01")).encode())[:-40]
    )
    (drop / "BTCUSDT-1h-2024-01-vendor.csv").write_text(csv_text(month_of(btc_hourly, "2024-01")).replace(",", ";"))

    result = run(
        tmp_path / "lake", tags=months("2024-01-01|BTCUSDT", "2024-01-01|ETHUSDT"), source="files", drop_dir=str(drop)
    )

    assert result.success
    tables = LakeTables.under(Settings(lake_dir=tmp_path / "lake"))
    for table in (tables.raw, tables.bronze, tables.silver):
        counts = read_rows(table, "1h").group_by("symbol").len().sort("symbol")
        assert counts.rows() == [("BTCUSDT", 744), ("ETHUSDT", 744)], table
    eth = read_rows(tables.bronze, "1h", "ETHUSDT")
    assert eth["timestamp"].to_list() == month_of(eth_hourly, "2024-01")["timestamp"].to_list()  # +01:00 read as UTC
    assert eth["close"].to_list() == month_of(eth_hourly, "2024-01")["close"].to_list()

    rejected = {p.name for p in (drop / "rejected").iterdir()}
    assert rejected == {
        "ETHUSDT-1h-2024-01-extra.csv.gz",
        "ETHUSDT-1h-2024-01-extra.csv.gz.reason.txt",
        "BTCUSDT-1h-2024-01-vendor.csv",
        "BTCUSDT-1h-2024-01-vendor.csv.reason.txt",
    }
    assert "rule: readable" in (drop / "rejected" / "ETHUSDT-1h-2024-01-extra.csv.gz.reason.txt").read_text()
    assert "rule: comma_separated" in (drop / "rejected" / "BTCUSDT-1h-2024-01-vendor.csv.reason.txt").read_text()
    assert sorted(meta(result, "raw_candles")["run_rejected_files"]) == [
        "BTCUSDT-1h-2024-01-vendor.csv",
        "ETHUSDT-1h-2024-01-extra.csv.gz",
    ]
    failed = check(result, "no_rejected_files")
    assert failed.passed is False and failed.severity == AssetCheckSeverity.ERROR
    assert "EOFError" in failed.metadata["reasons"].value["ETHUSDT-1h-2024-01-extra.csv.gz"]


def test_a_rejected_file_never_empties_a_month_the_lake_already_holds(tmp_path, btc_hourly):
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "BTCUSDT-1h-2024-02.csv").write_text(csv_text(month_of(btc_hourly, "2024-02")))
    assert run(tmp_path / "lake", partition_key="2024-02-01|BTCUSDT", source="files", drop_dir=str(drop)).success
    (drop / "BTCUSDT-1h-2024-02.csv").write_text("timestamp,open,high\n")  # the vendor re-sends a broken file

    result = run(tmp_path / "lake", partition_key="2024-02-01|BTCUSDT", source="files", drop_dir=str(drop))

    assert result.success and check(result, "no_rejected_files").passed is False
    assert read_rows(LakeTables.under(Settings(lake_dir=tmp_path / "lake")).silver, "1h").height == 696


def test_the_drop_folder_sensor_sets_a_bad_file_aside_and_its_runs_succeed(tmp_path, btc_hourly):
    """Before: the sensor skipped the bad file but requested a run for the good one, and that run read the bad file
    too (every BTCUSDT file) and failed."""
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "BTCUSDT-1h-2024-08.csv").write_text(csv_text(month_of(btc_hourly, "2024-08")))
    (drop / "BTCUSDT-1h-broken.csv.gz").write_bytes(gzip.compress(b"timestamp,open,high,low,close,volume\n" * 50)[:-9])
    (drop / "BTCUSDT-1h-2019.csv").write_text(
        csv_text(month_of(btc_hourly, "2024-08").with_columns(pl.col("timestamp").dt.offset_by("-5y")))
    )
    settings = Settings(home=tmp_path, drop_dir=drop, symbols=["BTCUSDT"], lake_dir=tmp_path / "lake")
    _, sensors = automation(settings, lake_job, training_job, evaluation_job)

    drop_folder = next(s for s in sensors if s.name == "drop_folder")

    result = drop_folder(build_sensor_context(repository_def=REPOSITORY))

    assert [r.partition_key for r in result.run_requests] == ["2024-08-01|BTCUSDT"]
    assert {p.name for p in (drop / "rejected").glob("*.reason.txt")} == {
        "BTCUSDT-1h-broken.csv.gz.reason.txt",
        "BTCUSDT-1h-2019.csv.reason.txt",
    }
    assert "rule: out_of_range" in (drop / "rejected" / "BTCUSDT-1h-2019.csv.reason.txt").read_text()
    request = result.run_requests[0]
    job = defs.resolve_job_def("lake_job")
    run_config = {
        "resources": {
            "itff": {
                "config": {**request.run_config["resources"]["itff"]["config"], "lake_dir": str(tmp_path / "lake")}
            }
        }
    }
    outcome = job.execute_in_process(
        partition_key=request.partition_key,
        run_config=run_config,
        tags=request.tags,
        instance=DagsterInstance.ephemeral(),
        raise_on_error=False,
    )
    assert outcome.success
    assert check(outcome, "no_rejected_files").passed
    assert read_rows(LakeTables.under(settings).silver, "1h").height == 744


# --- 13: silent drops -------------------------------------------------------------------------------------------------


def test_rows_outside_the_lake_are_quarantined_as_out_of_range_and_every_row_is_accounted_for(tmp_path, btc_hourly):
    """Before: the 2019 and 2099 rows of the file vanished without a count."""
    drop = tmp_path / "drop"
    drop.mkdir()
    january, february = month_of(btc_hourly, "2024-01"), month_of(btc_hourly, "2024-02")
    early = january.head(30).with_columns(pl.col("timestamp").dt.offset_by("-5y"))  # 2019: before ITFF_START_DATE
    late = january.head(7).with_columns(pl.col("timestamp").dt.offset_by("75y"))  # 2099: after the month in progress
    (drop / "BTCUSDT-1h-mixed.csv").write_text(csv_text(pl.concat([early, january, february, late])))

    result = run(tmp_path / "lake", partition_key="2024-01-01|BTCUSDT", source="files", drop_dir=str(drop))

    assert result.success
    raw, bronze = meta(result, "raw_candles"), meta(result, "bronze_candles")
    assert (
        raw["run_rows_received"],
        raw["dagster/row_count"],
        raw["run_rows_for_other_months"],
        raw["run_out_of_range_rows"],
    ) == (30 + 744 + 696 + 7, 744, 696, 37)
    assert raw["run_received_reconciles"] is True
    assert raw["run_rows_received"] == (
        bronze["dagster/row_count"]
        + bronze["quarantined_rows"]
        + bronze["collapsed_exact_duplicates"]
        + raw["run_out_of_range_rows"]
        + raw["run_rows_for_other_months"]
    )
    warned = check(result, "no_rows_out_of_range")
    # The 2019 rows are outside the lake as designed; the 2099 rows, stamped in the future, are what warns.
    assert (
        warned.passed is False
        and warned.severity == AssetCheckSeverity.WARN
        and warned.metadata["future_rows"].value == 7
    )
    assert "BTCUSDT-1h-mixed.csv" in warned.metadata["rows_by_file"].value
    quarantine = read_rows(LakeTables.under(Settings(lake_dir=tmp_path / "lake")).quarantine, "1h")
    kept = quarantine.filter(pl.col("rule").str.starts_with("out_of_range"))
    assert kept.height == 37 and sorted(kept["timestamp"].dt.year().unique()) == [2019, 2099]
    assert kept["close"].to_list() == pl.concat([early, late])["close"].to_list()  # kept as received

    again = run(tmp_path / "lake", partition_key="2024-01-01|BTCUSDT", source="files", drop_dir=str(drop))
    assert again.success  # a re-run replaces, it does not add
    assert read_rows(LakeTables.under(Settings(lake_dir=tmp_path / "lake")).quarantine, "1h").height == 37


# --- 14: a wrong symbol's prices --------------------------------------------------------------------------------------


def test_btc_prices_in_an_eth_file_are_named_by_the_continuity_check(tmp_path, btc_hourly):
    """Before: BTCUSDT's September filed as ETHUSDT passed every check and its 23x jump reached silver unnoticed."""
    lake_dir, drop = tmp_path / "lake", tmp_path / "drop"
    assert run(
        lake_dir, tags=months("2024-07-01|ETHUSDT", "2024-08-01|ETHUSDT")
    ).success  # the real ETH, from the sample
    drop.mkdir()
    (drop / "ETHUSDT-1h-2024-09.csv").write_text(csv_text(month_of(btc_hourly, "2024-09")))

    result = run(lake_dir, partition_key="2024-09-01|ETHUSDT", source="files", drop_dir=str(drop))

    assert result.success  # a warning: the operator verifies, the lake does not guess
    warned = check(result, "price_continuity")
    assert (
        warned.passed is False and warned.severity == AssetCheckSeverity.WARN and warned.metadata["breaks"].value == 1
    )
    table = warned.metadata["rows"].value
    assert ["ETHUSDT", "2024-09-01 00:00", "2513.01", "58974.0", "58930.0", "23.45"] in [
        r[:6] for r in markdown_rows(table)
    ], table
    assert meta(result, "bronze_candles")["continuity_breaks"] == 1
    assert (
        check(run(lake_dir, partition_key="2024-08-01|ETHUSDT"), "price_continuity").passed is False
    )  # the boundary after August


# --- 15: no vacuum ----------------------------------------------------------------------------------------------------


def test_maintenance_reclaims_replaced_files_so_reruns_no_longer_grow_the_lake(tmp_path, monkeypatch):
    """Before: every re-run left the replaced Parquet files behind, and nothing ever removed them."""
    import itff_platform.lake.layers as layers

    # Re-runs on unchanged inputs now write nothing (lake.incremental); these stand for re-runs whose inputs changed.
    monkeypatch.setattr(layers, "unchanged_months", lambda *args: [])
    lake_dir = tmp_path / "lake"
    tags = months("2024-05-01|BTCUSDT", "2024-08-01|ETHUSDT")
    assert run(lake_dir, tags=tags).success
    one_run = directory_bytes(lake_dir)
    for _ in range(4):
        assert run(lake_dir, tags=tags).success
    five_runs = directory_bytes(lake_dir)
    assert five_runs > 3 * one_run  # the growth the issue measured
    tables = LakeTables.under(Settings(lake_dir=lake_dir))
    silver_before = read_rows(tables.silver, "1h")
    orphan = (
        lake_dir
        / "silver"
        / "features"
        / "interval=1h"
        / "symbol=BTCUSDT"
        / "month=2024-05-01"
        / "part-orphan.lz4.parquet"
    )
    orphan.write_bytes(b"left by a writer killed before its commit")
    old = time.time() - 8 * 24 * 3600  # older than the week of retention
    os.utime(orphan, (old, old))

    # A week of retention (the default) keeps what time travel may still read: only the old orphan goes.
    kept = run(lake_dir, assets=maintenance)
    assert kept.success and not orphan.exists()
    assert meta(kept, "lake_maintenance")["files_vacuumed"] == 1 and directory_bytes(lake_dir) > 3 * one_run

    monkeypatch.setenv("ITFF_LAKE_VACUUM_RETENTION_HOURS", "0")
    vacuumed = run(lake_dir, assets=maintenance)
    after = directory_bytes(lake_dir)
    figures = meta(vacuumed, "lake_maintenance")
    assert vacuumed.success and figures["bytes_reclaimed"] == figures["bytes_before"] - figures["bytes_after"] > 0
    assert after < 1.3 * one_run, (one_run, five_runs, after)
    assert read_rows(tables.silver, "1h").equals(silver_before)  # same rows, fewer files
    for _ in range(3):
        assert run(lake_dir, tags=tags).success and run(lake_dir, assets=maintenance).success
    assert directory_bytes(lake_dir) < 1.3 * one_run  # bounded, however many re-runs
    print(
        f"\nlake bytes: 1 run {one_run:,}; 5 runs {five_runs:,}; after vacuum {after:,}; 8 runs + vacuum {directory_bytes(lake_dir):,}"
    )


# --- 16: silver behind bronze -----------------------------------------------------------------------------------------


def test_silver_behind_bronze_fails_the_check_and_a_rerun_brings_it_level(tmp_path, btc_hourly):
    """Before: nothing compared the two, and silver kept the old rows until someone happened to re-run it."""
    lake_dir, drop = tmp_path / "lake", tmp_path / "drop"
    drop.mkdir()
    january = month_of(btc_hourly, "2024-01")
    (drop / "BTCUSDT-1h-2024-01.csv").write_text(csv_text(january.head(700)))
    first = run(lake_dir, partition_key="2024-01-01|BTCUSDT", source="files", drop_dir=str(drop))
    assert first.success and check(first, "silver_matches_bronze").passed
    # The vendor completes the month, and the run that ingests it stops after bronze (as a kill between the two would).
    (drop / "BTCUSDT-1h-2024-01.csv").write_text(csv_text(january))
    stopped = run(
        lake_dir,
        partition_key="2024-01-01|BTCUSDT",
        selection=["raw_candles", "bronze_candles"],
        source="files",
        drop_dir=str(drop),
    )
    assert stopped.success

    job = defs.resolve_job_def("lake_maintenance_job")
    config = {"resources": {"itff": {"config": {"lake_dir": str(lake_dir)}}}}
    behind = job.execute_in_process(run_config=config, instance=DagsterInstance.ephemeral(), raise_on_error=False)
    caught = check(behind, "silver_matches_bronze")
    assert caught.passed is False and caught.severity == AssetCheckSeverity.ERROR
    assert caught.metadata["partitions_to_rerun"].value == ["2024-01-01|BTCUSDT"]
    assert ["BTCUSDT", "2024-01-01", "744", "700"] in [r[:4] for r in markdown_rows(caught.metadata["stale"].value)]

    rerun = run(lake_dir, partition_key="2024-01-01|BTCUSDT", source="files", drop_dir=str(drop))
    assert rerun.success and check(rerun, "silver_matches_bronze").passed
    level = job.execute_in_process(run_config=config, instance=DagsterInstance.ephemeral(), raise_on_error=False)
    assert check(level, "silver_matches_bronze").passed
    assert read_rows(LakeTables.under(Settings(lake_dir=lake_dir)).silver, "1h").height == 744
