import polars as pl

from itff_platform.lake.delta import replace_partitions, with_month
from itff_platform.lake.freshness import stale_silver
from itff_platform_tests.conftest import random_walk_candles


def table(candles: pl.DataFrame, symbol: str = "BTCUSDT") -> pl.DataFrame:
    return with_month(candles).with_columns(pl.lit("1h").alias("interval"), pl.lit(symbol).alias("symbol"))


def write(path, frame: pl.DataFrame) -> None:
    for symbol in frame["symbol"].unique():
        part = frame.filter(pl.col("symbol") == symbol)
        replace_partitions(path, part, "1h", symbol, part["month"].unique().to_list())


def test_each_way_silver_can_fall_behind_is_named_per_partition(tmp_path):
    bronze_path, silver_path = tmp_path / "bronze", tmp_path / "silver"
    btc, eth = table(random_walk_candles(24 * 60)), table(random_walk_candles(24 * 60, seed=1), "ETHUSDT")
    write(bronze_path, pl.concat([btc, eth]))
    write(silver_path, pl.concat([btc, eth]))
    assert stale_silver(bronze_path, silver_path, "1h").is_empty()

    january = btc.filter(pl.col("timestamp").dt.month() == 1)
    corrected = january.with_columns(
        pl.when(pl.int_range(pl.len()) == 100).then(pl.col("close") + 0.01).otherwise(pl.col("close")).alias("close")
    )
    write(bronze_path, corrected)  # one close corrected by a cent
    write(bronze_path, eth.filter(pl.col("timestamp").dt.month() == 2).head(500))  # February re-ingested, shorter
    stale = stale_silver(bronze_path, silver_path, "1h")
    assert stale.select("symbol", pl.col("month").dt.month(), "reason").rows() == [
        ("BTCUSDT", 1, "closes differ"),
        ("ETHUSDT", 2, "row counts differ"),
    ]

    write(silver_path, pl.concat([corrected, eth.filter(pl.col("timestamp").dt.month() == 2).head(500)]))
    assert stale_silver(bronze_path, silver_path, "1h").is_empty()
    assert stale_silver(bronze_path, tmp_path / "none", "1h")["reason"].unique().to_list() == [
        "bronze rows have no silver"
    ]
