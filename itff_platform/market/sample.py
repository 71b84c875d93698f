"""Real Binance spot candles shipped inside the package, so `make run` needs no network."""

from __future__ import annotations

from datetime import datetime
from importlib import resources

import polars as pl

from itff_platform.market.candles import CandleFormatError, within

SAMPLE_INTERVAL = "1h"


def sample_symbols() -> list[str]:
    folder = resources.files("itff_platform.market") / "sample_data"
    return sorted(p.name.split("-")[0] for p in folder.iterdir() if p.name.endswith(".parquet"))


class SampleCandleSource:
    """BTCUSDT and ETHUSDT 1h, 2021-04-04 .. 2024-09-30, as published by Binance (gaps included)."""

    name = "sample"

    def fetch(self, symbol: str, interval: str, start: datetime, end: datetime) -> pl.DataFrame:
        if interval != SAMPLE_INTERVAL:
            raise CandleFormatError(f"interval: the packaged sample holds {SAMPLE_INTERVAL} candles, not {interval!r}")
        path = resources.files("itff_platform.market") / "sample_data" / f"{symbol}-{SAMPLE_INTERVAL}.parquet"
        if not path.is_file():
            raise CandleFormatError(f"symbol: the packaged sample has {sample_symbols()}, not {symbol!r}")
        with resources.as_file(path) as local:
            return within(pl.read_parquet(local), start, end)
