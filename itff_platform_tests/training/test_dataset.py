from datetime import timedelta

import polars as pl

from itff_platform.features.silver import build_features
from itff_platform.market.synthetic import random_walk_candles
from itff_platform.settings import Settings
from itff_platform.training.dataset import training_data
from itff_platform_tests.conftest import utc


def test_as_of_keeps_only_rows_whose_label_was_known_by_then():
    settings = Settings()
    silver = build_features(random_walk_candles(3000, start=utc(2024, 1, 1)), settings).collect()
    as_of = utc(2024, 3, 1)
    data = training_data(settings, "X", "direction", as_of=as_of, silver=silver)
    last = data.timestamps[-1].astype("datetime64[us]").item().replace(tzinfo=as_of.tzinfo)
    # The label at t needs the close of bar t+h, known when that bar ends: t + (h+1) bars.
    assert last + (settings.features.label_horizon + 1) * timedelta(hours=1) == as_of


def test_features_are_in_the_fixed_order_and_rows_are_complete():
    settings = Settings()
    silver = build_features(random_walk_candles(3000), settings).collect()
    data = training_data(settings, "X", "level_up", silver=silver)
    assert data.features[:2] == ["log_return_1", "log_return_3"] and data.x.shape[1] == len(data.features)
    assert not pl.DataFrame(data.x).select(pl.all().is_nan().any()).row(0)[0]
