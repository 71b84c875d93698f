import hashlib
from pathlib import Path

import polars as pl
import pytest
from dagster import DagsterInstance, MultiPartitionKey, materialize

from itff_platform.definitions import lake
from itff_platform.defs.resources import ItffSettingsResource
from itff_platform.lake.delta import read_rows
from itff_platform.lake.layers import LakeTables
from itff_platform.settings import Settings
from itff_platform_tests.conftest import markdown_rows


def key(symbol: str, month: str) -> MultiPartitionKey:
    return MultiPartitionKey({"symbol": symbol, "month": month})


def run(lake_dir: Path, instance=None, partition_key=None, tags=None, **resource):
    return materialize(
        lake,
        partition_key=partition_key,
        tags=tags,
        instance=instance,
        resources={"itff": ItffSettingsResource(lake_dir=str(lake_dir), **resource)},
        raise_on_error=False,
    )


def file_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*.parquet")}


def backfill_tags(first: str, last: str) -> dict[str, str]:
    return {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}


@pytest.fixture(scope="module")
def backfilled(tmp_path_factory):
    """Six months x two symbols, as one single-run backfill."""
    lake_dir = tmp_path_factory.mktemp("lake")
    instance = DagsterInstance.ephemeral()
    result = run(lake_dir, instance, tags=backfill_tags("2022-12-01|BTCUSDT", "2023-05-01|ETHUSDT"))
    return lake_dir, instance, result


def test_a_backfill_of_many_partitions_is_one_run(backfilled):
    lake_dir, instance, result = backfilled
    assert result.success
    assert len(instance.get_runs()) == 1
    materialized = {(e.asset_key.to_user_string(), e.partition) for e in result.get_asset_materialization_events()}
    assert len(materialized) == 3 * 12
    settings = Settings(lake_dir=lake_dir)
    silver = read_rows(LakeTables.under(settings).silver, "1h")
    assert sorted(silver["symbol"].unique()) == ["BTCUSDT", "ETHUSDT"]
    assert silver["month"].n_unique() == 6


def test_metadata_reconciles_counts_per_partition_and_checks_pass(backfilled):
    _, _, result = backfilled
    bronze = {
        e.partition: {k: v.value for k, v in e.materialization.metadata.items()}
        for e in result.get_asset_materialization_events()
        if e.asset_key.to_user_string() == "bronze_candles"
    }
    for meta in bronze.values():
        assert (
            meta["raw_rows"]
            == meta["dagster/row_count"] + meta["quarantined_rows"] + meta["collapsed_exact_duplicates"]
        )
    # the zero-volume candles of the 2023-03-24 outage, each in its own partition
    assert {p: m["quarantined_rows"] for p, m in bronze.items() if m["quarantined_rows"]} == {
        "2023-03-01|BTCUSDT": 1,
        "2023-03-01|ETHUSDT": 1,
    }
    checks = {(e.asset_key.to_user_string(), e.check_name): e for e in result.get_asset_check_evaluations()}
    assert all(e.passed for e in checks.values()), {k: e.passed for k, e in checks.items()}
    # The 2023-03-24 outage is a gap on record: it passes, and is listed, rather than reading as a failure.
    gaps = checks[("bronze_candles", "no_unexpected_gaps")].metadata
    assert (gaps["gap_count"].value, gaps["known_outage_gaps"].value, gaps["unexpected_gaps"].value) == (2, 2, 0)
    assert ["ETHUSDT", "2023-03-24 11:00", "2023-03-24 14:00", "2", "exchange outage on record"] in markdown_rows(
        gaps["gaps"].value
    )


def test_rematerializing_one_partition_leaves_all_others_byte_identical(backfilled):
    lake_dir, _, _ = backfilled
    before = file_hashes(lake_dir)
    silver_before = read_rows(LakeTables.under(Settings(lake_dir=lake_dir)).silver, "1h")
    result = run(lake_dir, partition_key=key("BTCUSDT", "2023-02-01"))
    assert result.success
    after = file_hashes(lake_dir)
    others = {k: v for k, v in before.items() if "symbol=BTCUSDT/month=2023-02-01" not in k}
    assert {k: after.get(k) for k in others} == others
    silver_after = read_rows(LakeTables.under(Settings(lake_dir=lake_dir)).silver, "1h")
    assert silver_after.equals(silver_before)  # same inputs, same rows: idempotent


def test_files_source_quarantines_corrupt_rows_and_counts_reconcile(tmp_path, btc_hourly):
    drop = tmp_path / "drop"
    drop.mkdir()
    january = btc_hourly.filter(pl.col("timestamp").dt.strftime("%Y-%m") == "2024-01")
    text = january.with_columns(pl.col("timestamp").dt.strftime("%Y-%m-%d %H:%M:%S")).write_csv()
    lines = text.splitlines()
    lines[5] = lines[5].rsplit(",", 2)[0] + ",not-a-price,12.5"  # close corrupt
    lines[9] = ",".join([*lines[9].split(",")[:2], "1.0", "2.0", *lines[9].split(",")[4:]])  # high < low
    lines.append(lines[20])  # an exact duplicate
    (drop / "BTCUSDT-1h-2024-01.csv").write_text("\n".join(lines) + "\n")

    result = run(tmp_path / "lake", partition_key=key("BTCUSDT", "2024-01-01"), source="files", drop_dir=str(drop))
    assert result.success
    bronze = next(
        e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == "bronze_candles"
    )
    meta = {k: v.value for k, v in bronze.materialization.metadata.items()}
    assert (
        meta["raw_rows"],
        meta["dagster/row_count"],
        meta["quarantined_rows"],
        meta["collapsed_exact_duplicates"],
    ) == (745, 742, 2, 1)
    quarantine = read_rows(LakeTables.under(Settings(lake_dir=tmp_path / "lake")).quarantine, "1h")
    assert sorted(quarantine["rule"]) == ["close: must be a finite number", "high: must be >= low"]
    assert quarantine["batch_id"].n_unique() == 1 and quarantine["source"][0] == "files"


def test_a_failing_blocking_check_stops_silver(tmp_path, monkeypatch):
    """If cleaning ever let a bad row through, bronze's checks must fail and silver must not run."""
    import itff_platform.lake.layers as layers
    from itff_platform.lake.cleaning import BronzeResult

    def careless_clean(raw, interval_seconds):
        bad = raw.drop("source", "ingested_at", "batch_id").with_columns(
            pl.when(pl.int_range(pl.len()) == 3).then(pl.col("low") / 2).otherwise(pl.col("high")).alias("high")
        )
        return BronzeResult(
            bronze=bad,
            quarantine=raw.head(0).with_columns(pl.lit("").alias("rule")),
            raw_rows=raw.height,
            collapsed_duplicates=0,
        )

    monkeypatch.setattr(layers, "clean_raw", careless_clean)
    result = run(tmp_path / "lake", partition_key=key("ETHUSDT", "2024-01-01"))
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks["ohlc_consistent"] is False
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert "silver_features" not in materialized
    assert not (tmp_path / "lake" / "silver").exists()


def test_each_silver_partition_of_a_backfill_reports_its_own_rows(backfilled):
    lake_dir, instance, _result = backfilled
    from dagster import AssetKey, AssetRecordsFilter

    silver = read_rows(LakeTables.under(Settings(lake_dir=lake_dir)).silver, "1h")
    counts = {
        (r["symbol"], str(r["month"])): r["len"] for r in silver.group_by("symbol", "month").len().iter_rows(named=True)
    }
    for (symbol, month), rows in counts.items():
        (record,) = instance.fetch_materializations(
            AssetRecordsFilter(asset_key=AssetKey("silver_features"), asset_partitions=[f"{month}|{symbol}"]), limit=1
        ).records
        meta = {k: v.value for k, v in record.asset_materialization.metadata.items()}
        assert meta["dagster/row_count"] == rows, (symbol, month)
        assert sum(int(line.split("|")[2]) for line in meta["regimes"].splitlines()[2:]) == rows
    assert len(set(counts.values())) > 1  # months differ in length, so a run-wide figure could not pass
