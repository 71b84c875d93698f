import polars as pl

from itff_platform.features.labels import LABEL_COLUMNS
from itff_platform.features.lookahead import lookahead_violations
from itff_platform.features.silver import build_features
from itff_platform.settings import Settings


def silver(candles: pl.DataFrame) -> pl.DataFrame:
    return build_features(candles, Settings()).collect()


def test_changing_the_future_leaves_every_feature_up_to_t_unchanged(btc_hourly):
    """Every price and volume after bar t is multiplied by a random factor; features and regime up to t are bit-identical."""
    assert lookahead_violations(silver, btc_hourly.head(4000), cut=3000) == []


def test_only_the_labels_read_ahead(btc_hourly):
    candles = btc_hourly.head(4000)
    h = Settings().features.label_horizon
    before = silver(candles).slice(3000 - h + 1, h).select(LABEL_COLUMNS)
    changed = candles.with_columns(
        pl.when(pl.int_range(pl.len()) > 3000).then(pl.col("close") * 1.3).otherwise(pl.col("close")).alias("close")
    )
    after = silver(changed).slice(3000 - h + 1, h).select(LABEL_COLUMNS)
    assert not before.equals(after)


def test_a_deliberately_leaking_feature_is_caught_by_name(btc_hourly):
    def leaky(candles: pl.DataFrame) -> pl.DataFrame:
        return silver(candles).with_columns(
            (pl.col("close").shift(-1) / pl.col("close")).log().alias("next_bar_return"),  # the future, disguised
            pl.col("close").rolling_mean(24, center=True).alias("centred_average"),  # a classic accidental leak
        )

    assert lookahead_violations(leaky, btc_hourly.head(4000), cut=3000) == ["next_bar_return", "centred_average"]
