import hashlib
from datetime import date
from pathlib import Path

import polars as pl
import pytest
from deltalake import DeltaTable

from itff_platform.lake.delta import partition_predicate, read_rows, replace_partitions, with_month
from itff_platform_tests.conftest import random_walk_candles, utc


def lake_frame(symbol: str, n: int = 24 * 90, seed: int = 0) -> pl.DataFrame:
    candles = random_walk_candles(n, seed=seed, start=utc(2024, 1, 1))
    return with_month(candles).with_columns(pl.lit("1h").alias("interval"), pl.lit(symbol).alias("symbol"))


def partition_files(path: Path) -> dict[str, str]:
    """Every data file under the table, with a hash of its bytes."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in path.rglob("*.parquet")}


def write_all(path: Path, frame: pl.DataFrame) -> None:
    for symbol in frame["symbol"].unique():
        mine = frame.filter(pl.col("symbol") == symbol)
        replace_partitions(path, mine, "1h", symbol, mine["month"].unique().to_list())


def test_rewriting_one_partition_leaves_every_other_partition_byte_identical(tmp_path):
    path = tmp_path / "table"
    frame = pl.concat([lake_frame("BTCUSDT"), lake_frame("ETHUSDT", seed=1)])
    write_all(path, frame)
    before = partition_files(path)
    assert len(before) == 6  # 2 symbols x 3 months

    february = frame.filter((pl.col("symbol") == "BTCUSDT") & (pl.col("month") == date(2024, 2, 1)))
    replace_partitions(path, february.with_columns(pl.col("close") * 2), "1h", "BTCUSDT", [date(2024, 2, 1)])
    after = partition_files(path)

    untouched = {k: v for k, v in before.items() if "symbol=BTCUSDT/month=2024-02-01" not in k}
    assert {k: after[k] for k in untouched} == untouched
    back = read_rows(path, "1h")
    assert back.height == frame.height
    doubled = back.filter((pl.col("symbol") == "BTCUSDT") & (pl.col("month") == date(2024, 2, 1)))
    assert doubled["close"].to_list() == (february["close"] * 2).to_list()


def test_rerunning_the_same_write_is_idempotent(tmp_path):
    path = tmp_path / "table"
    frame = lake_frame("BTCUSDT")
    write_all(path, frame)
    write_all(path, frame)
    assert read_rows(path, "1h").height == frame.height


def test_rows_outside_the_partition_are_refused_not_written(tmp_path):
    """The predicate guards the write: rows for another month cannot slip in and widen the overwrite."""
    path = tmp_path / "table"
    frame = lake_frame("BTCUSDT")
    write_all(path, frame)
    with pytest.raises(Exception, match="rows failed validation check"):
        replace_partitions(path, frame, "1h", "BTCUSDT", [date(2024, 1, 1)])
    assert read_rows(path, "1h").height == frame.height


def test_month_is_a_date_partition_and_the_predicate_uses_date_literals(tmp_path):
    path = tmp_path / "table"
    write_all(path, lake_frame("BTCUSDT"))
    schema = DeltaTable(str(path)).schema()
    assert {f.name: str(f.type) for f in schema.fields}["month"].lower().find("date") >= 0
    assert "DATE '2024-02-01'" in partition_predicate("1h", "BTCUSDT", [date(2024, 2, 1)])


def test_an_empty_frame_empties_just_that_partition(tmp_path):
    path = tmp_path / "table"
    frame = lake_frame("BTCUSDT")
    write_all(path, frame)
    replace_partitions(path, frame.head(0), "1h", "BTCUSDT", [date(2024, 3, 1)])
    months = read_rows(path, "1h")["month"].unique().sort().to_list()
    assert months == [date(2024, 1, 1), date(2024, 2, 1)]


def test_reading_a_missing_table_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="materialize the upstream asset first"):
        read_rows(tmp_path / "nothing", "1h")


def test_file_writes_replace_their_months_in_one_commit_and_touch_nothing_else(tmp_path):
    from itff_platform.lake.delta import replace_partitions_by_files

    path = tmp_path / "table"
    btc, eth = lake_frame("BTCUSDT"), lake_frame("ETHUSDT", seed=1)
    write_all(path, pl.concat([btc, eth]))
    before, version = partition_files(path), DeltaTable(str(path)).version()
    months = [date(2024, 1, 1), date(2024, 2, 1)]
    parts = [(m, btc.filter(pl.col("month") == m).with_columns(pl.col("volume") + 1).lazy()) for m in months]
    replace_partitions_by_files(path, parts, "1h", "BTCUSDT", btc.schema)

    assert DeltaTable(str(path)).version() == version + 1
    after = partition_files(path)
    kept = {k: v for k, v in before.items() if not ("BTCUSDT/month=2024-01" in k or "BTCUSDT/month=2024-02" in k)}
    assert {k: after[k] for k in kept} == kept
    back = read_rows(path, "1h")
    assert back.height == btc.height + eth.height
    replaced = back.filter((pl.col("symbol") == "BTCUSDT") & pl.col("month").is_in(months))
    assert replaced["volume"].to_list() == (btc.filter(pl.col("month").is_in(months))["volume"] + 1).to_list()
    # The stats written with each file let a timestamp predicate skip files.
    assert read_rows(path, "1h", "BTCUSDT", utc(2024, 2, 10), utc(2024, 2, 11)).height == 24


def test_bronze_for_months_that_are_not_adjacent_leaves_the_month_between_alone(tmp_path):
    from itff_platform.lake.layers import LakeTables, build_bronze, ingest_raw
    from itff_platform.market.sample import SampleCandleSource
    from itff_platform.settings import Settings

    settings = Settings(lake_dir=tmp_path / "lake")
    months = [utc(2024, 1, 1), utc(2024, 2, 1), utc(2024, 3, 1)]
    ingest_raw(SampleCandleSource(), settings, "BTCUSDT", months)
    build_bronze(settings, "BTCUSDT", [months[1]])
    report = build_bronze(settings, "BTCUSDT", [months[0], months[2]])
    assert report.result.raw_rows == (31 + 31) * 24 and report.result.reconciles
    bronze = read_rows(LakeTables.under(settings).bronze, "1h")
    assert bronze.group_by("month").len().sort("month")["len"].to_list() == [744, 696, 744]


def test_one_symbol_reads_back_in_time_order_whatever_the_order_of_its_files(tmp_path):
    """read_rows puts sorted runs (files) in order without a full sort: months written newest first, and a day
    rewritten inside a month (a second file there), still read back exactly as a sort would give them."""
    path = tmp_path / "table"
    frame = lake_frame("BTCUSDT")
    for month in sorted(frame["month"].unique().to_list(), reverse=True):
        replace_partitions(path, frame.filter(pl.col("month") == month), "1h", "BTCUSDT", [month])
    since = utc(2024, 2, 10)
    replace_partitions(
        path,
        frame.filter(pl.col("timestamp") >= since, pl.col("month") == date(2024, 2, 1)),
        "1h",
        "BTCUSDT",
        [date(2024, 2, 1)],
        since=since,
    )
    back = read_rows(path, "1h", "BTCUSDT")
    assert back["timestamp"].is_sorted()
    assert back.select(frame.columns).equals(frame)


def test_time_order_falls_back_to_a_sort_when_runs_overlap():
    from itff_platform.lake.delta import in_time_order

    frame = lake_frame("BTCUSDT", n=48)
    interleaved = pl.concat([frame.gather_every(2), frame.gather_every(2, offset=1)])
    assert in_time_order(interleaved).equals(frame)
    assert in_time_order(pl.concat([frame.tail(10), frame.head(38)])).equals(frame)


def test_time_order_keeps_apart_files_that_follow_each_other_forward_in_time(monkeypatch):
    """Files read in the log's order, January then March then February: January and March step forward in time,
    so they are told apart by where their chunks end, not merged into one run that overlaps February and forces
    a sort of every row (the bench's 10M-row bronze read took 1.5 s of CPU in that sort)."""
    from itff_platform.lake.delta import in_time_order

    frame = lake_frame("BTCUSDT")
    months = [frame.filter(pl.col("month") == m) for m in sorted(frame["month"].unique().to_list())]
    as_read = pl.concat([months[0], months[2], months[1]], rechunk=False)
    assert as_read["timestamp"].chunk_lengths() == [m.height for m in (months[0], months[2], months[1])]

    def no_sort(*args, **kwargs):
        raise AssertionError("sorted every row: the files' runs were not told apart")

    monkeypatch.setattr(pl.DataFrame, "sort", no_sort)
    ordered = in_time_order(as_read)
    assert ordered.equals(frame)
    assert ordered["timestamp"].flags["SORTED_ASC"]
