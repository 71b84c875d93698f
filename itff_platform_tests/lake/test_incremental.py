"""An incremental lake: a partition is rebuilt exactly when what it is built from changed (lake.incremental).

A files source with one CSV per month over four months of the real sample; each test builds the lake, changes one
thing, builds again with skip_unchanged and checks which partitions of which layer were rebuilt, and that the lake
then equals a lake built from scratch on the same inputs."""

import re
from datetime import date
from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable, write_deltalake

from itff_platform.lake.delta import partition_predicate, read_rows, with_month
from itff_platform.lake.incremental import SILVER_SETTINGS, silver_fingerprints
from itff_platform.lake.layers import LakeTables, build_bronze, ingest_raw, refresh_silver, unchanged_lake
from itff_platform.market.files import FilesCandleSource
from itff_platform.market.sample import SampleCandleSource
from itff_platform.settings import BY_PATH, LEAVES, Settings
from itff_platform_tests.conftest import random_walk_candles, utc

MONTHS = [utc(2023, m, 1) for m in (1, 2, 3, 4)]
MONTHS_AS_DATES = [m.date() for m in MONTHS]
JAN, FEB, MAR, APR = MONTHS_AS_DATES


def write_month_files(drop: Path, candles: pl.DataFrame) -> None:
    for month in MONTHS:
        rows = candles.filter(pl.col("timestamp").dt.truncate("1mo") == month)
        rows.with_columns(pl.col("timestamp").dt.strftime("%Y-%m-%d %H:%M:%S")).write_csv(
            drop / f"BTCUSDT-1h-{month:%Y-%m}.csv"
        )


def build(settings: Settings) -> dict[str, list[date]]:
    """One incremental run over the four months, as the lake assets make it: the months each layer left unchanged."""
    source = FilesCandleSource(settings.sources.files.drop_dir)
    raw = ingest_raw(source, settings, "BTCUSDT", MONTHS, skip_unchanged=True)
    bronze = build_bronze(settings, "BTCUSDT", MONTHS, skip_unchanged=True)
    silver = refresh_silver(settings, "BTCUSDT", MONTHS, skip_unchanged=True)
    return {"raw": raw.unchanged, "bronze": bronze.unchanged, "silver": silver.unchanged}


def rebuilt(unchanged: dict[str, list[date]]) -> dict[str, set[date]]:
    return {layer: set(MONTHS_AS_DATES) - set(months) for layer, months in unchanged.items()}


def silver_rows(settings: Settings) -> pl.DataFrame:
    return read_rows(LakeTables.under(settings).silver, "1h").drop("month").sort("timestamp")


@pytest.fixture
def lake(tmp_path, btc_hourly) -> Settings:
    """Four months of BTCUSDT from one CSV file per month, built once."""
    drop = tmp_path / "drop"
    drop.mkdir()
    write_month_files(
        drop, btc_hourly.filter(pl.col("timestamp").is_between(utc(2023, 1, 1), utc(2023, 5, 1), closed="left"))
    )
    settings = Settings(home=tmp_path, lake_dir=tmp_path / "lake", drop_dir=drop, source="files")
    assert rebuilt(build(settings)) == {layer: set(MONTHS_AS_DATES) for layer in ("raw", "bronze", "silver")}
    return settings


def edit_csv(path: Path, stamp: str, close: float) -> None:
    """Set the close of the bar at `stamp` (and keep the candle consistent), as a vendor's corrected re-send would."""
    rows = pl.read_csv(path)
    fix = pl.col("timestamp") == stamp
    rows = rows.with_columns(pl.when(fix).then(close).otherwise(pl.col("close")).alias("close"))
    rows = rows.with_columns(
        pl.when(fix).then(pl.max_horizontal("high", "close")).otherwise(pl.col("high")).alias("high"),
        pl.when(fix).then(pl.min_horizontal("low", "close")).otherwise(pl.col("low")).alias("low"),
    )
    assert rows.filter(fix).height == 1
    rows.write_csv(path)


def from_scratch(settings: Settings, tmp_path: Path, **changes) -> pl.DataFrame:
    """Silver built on a new lake from the same drop files: what the incremental lake must equal."""
    fresh = settings.model_copy(update={"lake_dir": tmp_path / "fresh", **changes})
    build(fresh)
    return silver_rows(fresh)


def test_a_second_run_on_unchanged_inputs_skips_every_partition_and_writes_nothing(lake):
    versions = LakeTables.under(lake).versions()
    assert rebuilt(build(lake)) == {"raw": set(), "bronze": set(), "silver": set()}
    assert LakeTables.under(lake).versions() == versions  # not one commit


def test_a_corrected_file_rebuilds_its_month_and_the_silver_months_whose_warm_up_reads_it(lake, tmp_path):
    # Mid-February: February's bronze, and the silver of February and March (whose 745-bar warm-up covers all of
    # February); not January (its labels read only February's first 4 bars) and not April (its warm-up starts
    # on 28 February).
    edit_csv(lake.sources.files.drop_dir / "BTCUSDT-1h-2023-02.csv", "2023-02-14 10:00:00", 30_000.0)
    assert rebuilt(build(lake)) == {"raw": {FEB}, "bronze": {FEB}, "silver": {FEB, MAR}}
    assert silver_rows(lake).equals(from_scratch(lake, tmp_path))


def test_a_change_in_the_first_bars_of_a_month_rebuilds_the_previous_months_labels(lake, tmp_path):
    edit_csv(lake.sources.files.drop_dir / "BTCUSDT-1h-2023-02.csv", "2023-02-01 01:00:00", 30_000.0)
    assert rebuilt(build(lake)) == {"raw": {FEB}, "bronze": {FEB}, "silver": {JAN, FEB, MAR}}
    assert silver_rows(lake).equals(from_scratch(lake, tmp_path))


def test_a_change_late_in_a_month_reaches_the_next_but_one_months_warm_up(lake, tmp_path):
    # 28 February 23:00 is within 745 bars of 1 April: April's features read it, as do March's.
    edit_csv(lake.sources.files.drop_dir / "BTCUSDT-1h-2023-02.csv", "2023-02-28 23:00:00", 30_000.0)
    assert rebuilt(build(lake)) == {"raw": {FEB}, "bronze": {FEB}, "silver": {FEB, MAR, APR}}
    assert silver_rows(lake).equals(from_scratch(lake, tmp_path))


def test_a_changed_feature_setting_rebuilds_silver_only_and_a_cleaning_relevant_one_rebuilds_bronze(lake, tmp_path):
    changed = lake.model_copy(update={"rsi_period": 10})
    assert rebuilt(build(changed)) == {"raw": set(), "bronze": set(), "silver": set(MONTHS_AS_DATES)}
    assert silver_rows(changed).equals(from_scratch(lake, tmp_path, rsi_period=10))
    # Settings no layer reads leave the lake alone.
    assert rebuilt(build(changed.model_copy(update={"trials": 9, "gap_tolerance_bars": 3}))) == {
        "raw": set(),
        "bronze": set(),
        "silver": set(),
    }


def test_records_survive_compaction_but_a_partial_rewrite_or_an_unknown_writer_forces_a_rebuild(lake):
    tables = LakeTables.under(lake)
    DeltaTable(tables.silver).optimize.compact()  # rewrites files, not rows: the records still hold
    DeltaTable(tables.silver).vacuum(retention_hours=0, dry_run=False, enforce_retention_duration=False)
    assert rebuilt(build(lake))["silver"] == set()

    # A daily update rewrites March from the 20th on: March's record no longer describes March.
    refresh_silver(lake, "BTCUSDT", [utc(2023, 3, 1)], since=utc(2023, 3, 20))
    assert rebuilt(build(lake))["silver"] == {MAR}

    # A write this code did not make (no record in its commit): nothing older can be trusted.
    bronze = read_rows(tables.bronze, "1h").filter(pl.col("month") == JAN)
    write_deltalake(
        tables.bronze, bronze.to_arrow(), mode="overwrite", predicate=partition_predicate("1h", "BTCUSDT", [JAN])
    )
    assert rebuilt(build(lake)) == {"raw": set(), "bronze": set(MONTHS_AS_DATES), "silver": set()}


def test_unchanged_lake_sees_a_change_in_any_layer(tmp_path):
    settings = Settings(home=tmp_path, lake_dir=tmp_path / "lake")
    months = {"BTCUSDT": MONTHS[:2]}
    source = SampleCandleSource()
    assert not unchanged_lake(settings, source, months)  # nothing built yet
    ingest_raw(source, settings, "BTCUSDT", MONTHS[:2])
    build_bronze(settings, "BTCUSDT", MONTHS[:2])
    assert not unchanged_lake(settings, source, months)  # silver missing
    refresh_silver(settings, "BTCUSDT", MONTHS[:2])
    assert unchanged_lake(settings, source, months)
    assert not unchanged_lake(settings.model_copy(update={"label_horizon": 6}), source, months)


def test_silver_fingerprints_cover_every_setting_the_features_read():
    """A feature setting left out of SILVER_SETTINGS would let a changed setting keep stale silver."""
    package = Path(__file__).resolve().parents[2] / "itff_platform" / "features"
    named = {
        tuple(m.split("."))
        for p in package.glob("*.py")
        for m in re.findall(r"\b(?:s|settings)\.([a-z_]+(?:\.[a-z_]+)*)", p.read_text())
    }
    derived = {("bars_per_day",): "interval", ("interval_seconds",): "interval"}  # properties of the interval
    # settings.features.rsi_period -> rsi_period: the longest leading part of each access that is a setting
    fields = {
        derived.get(path)
        or next((BY_PATH[path[:n]].name for n in range(len(path), 0, -1) if path[:n] in BY_PATH), None)
        for path in named
    } - {None}
    assert fields and fields - set(SILVER_SETTINGS) == set()
    assert set(SILVER_SETTINGS) <= set(LEAVES)


def test_silver_fingerprints_take_the_rows_as_a_set_and_change_only_where_a_row_is_read():
    """Each month's fingerprint slices one row-hash array in time order: shuffled rows give the same fingerprints,
    and a changed bar changes exactly the months whose read span (warm-up and label horizon) holds it."""
    settings = Settings()
    months = [utc(2024, m, 1) for m in (2, 3, 4)]
    bronze = with_month(random_walk_candles(24 * 130, start=utc(2024, 1, 1)))
    before = silver_fingerprints(settings, bronze, months)
    assert silver_fingerprints(settings, bronze.sample(fraction=1.0, shuffle=True, seed=1), months) == before
    changed_at = utc(2024, 4, 1, 2)
    changed = bronze.with_columns(
        pl.when(pl.col("timestamp") == changed_at)
        .then(pl.col("volume") * 2)
        .otherwise(pl.col("volume"))
        .alias("volume")
    )
    after = silver_fingerprints(settings, changed, months)
    # In April, and within March's label horizon (4 bars); February's read ends at March 1, 04:00.
    assert [m for m in before if before[m] != after[m]] == [date(2024, 3, 1), date(2024, 4, 1)]


def test_a_rebuild_keeps_only_the_columns_asked_for_and_writes_every_column(lake):
    """silver_features keeps the validated columns of a rebuild, not every row's 43 columns; the table gets them all."""
    whole = silver_rows(lake)
    asked = ["timestamp", "rsi", "regime"]
    refreshed = refresh_silver(lake, "BTCUSDT", MONTHS, columns=asked)
    assert refreshed.rows.columns == asked and set(refreshed.schema) == {*whole.columns, "month"}
    assert refreshed.rows.sort("timestamp").equals(whole.select(asked))
    assert silver_rows(lake).equals(whole)
