import numpy as np
import polars as pl

from itff_platform.features.labels import LABEL_COLUMNS
from itff_platform.features.silver import build_features
from itff_platform.settings import Settings


def test_changing_the_future_leaves_every_feature_up_to_t_unchanged(btc_hourly):
    settings = Settings()
    candles = btc_hourly.head(4000)
    cut = 3000
    rng = np.random.default_rng(7)
    def future_shock():
        return np.r_[np.ones(cut + 1), rng.uniform(0.5, 1.5, len(candles) - cut - 1)]

    price_shock, volume_shock = future_shock(), future_shock()
    future_changed = candles.with_columns(
        *(pl.col(c) * price_shock for c in ("open", "high", "low", "close")),
        pl.col("volume") * volume_shock,
    )
    before = build_features(candles, settings).collect()
    after = build_features(future_changed, settings).collect()
    feature_part = [c for c in before.columns if c not in LABEL_COLUMNS]
    assert before.head(cut + 1).select(feature_part).equals(after.head(cut + 1).select(feature_part))
    # The labels, and only the labels, read ahead: bars just before the cut see the changed future.
    h = settings.label_horizon
    assert not before.slice(cut - h + 1, h).select(LABEL_COLUMNS).equals(after.slice(cut - h + 1, h).select(LABEL_COLUMNS))
