"""A drop folder of vendor exports: CSV (with or without header), gzip CSV, Parquet, Binance zips.

A file belongs to a symbol and interval by its name, the way Binance names archives:
`BTCUSDT-1h-2024-01.zip`, `BTCUSDT-1h.csv`, `btcusdt_1h_export.parquet`.

A file that cannot be used (truncated, corrupt, foreign separator, missing column, unparseable time) is set aside
into `rejected/` beside a `<file>.reason.txt` that names the field and the rule, so one bad file never stops the
other files or symbols. Files under `rejected/` are never read again; the vendor re-sends a fixed file to the drop folder.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from itff_platform.market.candles import CANDLE_COLUMNS, CANDLE_SCHEMA, within
from itff_platform.market.parsing import CandleFileError, read_candle_file

SUFFIXES = (".csv", ".csv.gz", ".parquet", ".zip")
REJECTED_DIR = "rejected"
REASON_SUFFIX = ".reason.txt"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RejectedFile:
    """A file set aside: where it was, where it is now, and the field and rule it broke."""

    file: str  # relative to the drop folder, as it was found
    field: str
    rule: str
    message: str
    moved_to: str

    def as_row(self) -> dict[str, str]:
        return {
            "file": self.file,
            "field": self.field,
            "rule": self.rule,
            "moved_to": self.moved_to,
            "message": self.message,
        }


def set_aside(folder: Path, path: Path, error: CandleFileError) -> RejectedFile:
    """Move `path` into `folder/rejected/` (keeping its sub-path) and write `<file>.reason.txt` beside it."""
    relative = path.relative_to(folder)
    target = folder / REJECTED_DIR / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    reason = target.with_name(target.name + REASON_SUFFIX)
    reason.write_text(
        f"file: {relative}\nfield: {error.field}\nrule: {error.rule}\n"
        f"set aside at: {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}\n\n{error}\n"
    )
    os.replace(path, target)  # atomic on one filesystem; a re-sent bad file replaces the older one
    log.warning("drop folder: set %s aside into %s: %s", relative, target.parent, error)
    return RejectedFile(str(relative), error.field, error.rule, str(error), str(target))


def read_drop_file(folder: Path, path: Path) -> tuple[pl.DataFrame | None, RejectedFile | None]:
    """Read one drop file: (candles, None), or (None, how it was set aside)."""
    try:
        return read_candle_file(path), None
    except CandleFileError as error:
        return None, set_aside(folder, path, error)


class FilesCandleSource:
    name = "files"

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.rejected: list[RejectedFile] = []  # every file this source set aside, in order

    def files_for(self, symbol: str, interval: str) -> list[Path]:
        pattern = re.compile(rf"^{re.escape(symbol)}[-_]{re.escape(interval)}([-_.]|$)", re.IGNORECASE)
        if not self.folder.is_dir():
            return []
        rejected = self.folder / REJECTED_DIR
        return sorted(
            p
            for p in self.folder.rglob("*")
            if p.is_file() and p.name.lower().endswith(SUFFIXES) and pattern.match(p.name) and rejected not in p.parents
        )

    def read(self, symbol: str, interval: str) -> pl.DataFrame:
        """Every row the symbol's readable files hold, whatever its time, with the `file` it came from.
        Unreadable files are set aside and recorded in `self.rejected`."""
        frames = []
        for path in self.files_for(symbol, interval):
            candles, rejected = read_drop_file(self.folder, path)
            if rejected is not None:
                self.rejected.append(rejected)
                continue
            assert candles is not None  # read_drop_file returns one of the two
            frames.append(candles.with_columns(pl.lit(str(path.relative_to(self.folder))).alias("file")))
        if not frames:
            return pl.DataFrame(schema={**CANDLE_SCHEMA, "file": pl.String})
        return pl.concat(frames, how="vertical")

    def fetch(self, symbol: str, interval: str, start: datetime, end: datetime) -> pl.DataFrame:
        return within(self.read(symbol, interval).select(CANDLE_COLUMNS), start, end)
