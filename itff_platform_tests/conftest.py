import warnings
from datetime import datetime, timezone

import numpy as np
import polars as pl
import pytest

from itff_platform.market.sample import SampleCandleSource
from itff_platform.settings import Settings

warnings.filterwarnings("ignore", message=".*is currently in beta.*")

UTC = timezone.utc


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(home=tmp_path, lake_dir=tmp_path / "lake", drop_dir=tmp_path / "drop")


@pytest.fixture(scope="session")
def btc_hourly() -> pl.DataFrame:
    """The packaged real sample, as the source returns it."""
    return SampleCandleSource().fetch("BTCUSDT", "1h", utc(2021, 1, 1), utc(2025, 1, 1))


def random_walk_candles(n: int, seed: int = 0, start: datetime = utc(2024, 1, 1), step_s: int = 3600) -> pl.DataFrame:
    """Geometric random walk candles with consistent OHLC: synthetic, for edge cases and scale."""
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.002, n)))
    open_ = np.r_[close[0], close[:-1]]
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0, 0.001, n)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0, 0.001, n)))
    start_us = int(start.timestamp() * 1_000_000)
    return pl.DataFrame(
        {
            "timestamp": pl.Series(np.arange(n, dtype=np.int64) * step_s * 1_000_000 + start_us).cast(pl.Datetime("us", "UTC")),
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "volume": rng.gamma(2.0, 10.0, n),
        }
    )
