"""A drop folder of vendor exports: CSV (with or without header), gzip CSV, Parquet, Binance zips.

A file belongs to a symbol and interval by its name, the way Binance names archives:
`BTCUSDT-1h-2024-01.zip`, `BTCUSDT-1h.csv`, `btcusdt_1h_export.parquet`.
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import polars as pl

from itff_platform.market.candles import empty_candles, within
from itff_platform.market.parsing import read_candle_file

SUFFIXES = (".csv", ".csv.gz", ".parquet", ".zip")


class FilesCandleSource:
    name = "files"

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def files_for(self, symbol: str, interval: str) -> list[Path]:
        pattern = re.compile(rf"^{re.escape(symbol)}[-_]{re.escape(interval)}([-_.]|$)", re.IGNORECASE)
        if not self.folder.is_dir():
            return []
        return sorted(
            p for p in self.folder.rglob("*")
            if p.is_file() and p.name.lower().endswith(SUFFIXES) and pattern.match(p.name)
        )

    def fetch(self, symbol: str, interval: str, start: datetime, end: datetime) -> pl.DataFrame:
        frames = [within(read_candle_file(path), start, end) for path in self.files_for(symbol, interval)]
        return pl.concat(frames, how="vertical") if frames else empty_candles()
