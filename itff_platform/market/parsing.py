"""Turn vendor exports into the canonical candle frame: header aliases, epoch units, date formats."""

from __future__ import annotations

import gzip
import io
import zipfile
import zlib
from pathlib import Path

import polars as pl

from itff_platform.market.candles import CANDLE_COLUMNS, CANDLE_SCHEMA, CandleFormatError


class CandleFileError(CandleFormatError):
    """A whole file is unusable. Names the file, the field and the rule, so it can be set aside with its reason."""

    def __init__(self, file: str, field: str, rule: str, detail: str) -> None:
        self.file, self.field, self.rule, self.detail = file, field, rule, detail
        super().__init__(f"{file}: {detail}")


# What a damaged file raises while it is opened: a truncated gzip (EOFError), a corrupt zip (BadZipFile),
# a bad deflate stream (zlib.error), an unreadable Parquet or undecodable CSV (PolarsError, OSError).
UNREADABLE = (EOFError, OSError, zipfile.BadZipFile, zlib.error, UnicodeDecodeError, pl.exceptions.PolarsError)
OTHER_SEPARATORS = {";": "semicolons", "\t": "tabs", "|": "pipes"}

# Binance archive CSVs carry no header; these are its columns in order.
BINANCE_KLINE_COLUMNS = [
    "open_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "close_time",
    "quote_volume",
    "trades",
    "taker_buy_base",
    "taker_buy_quote",
    "ignore",
]

# Normalised header (lower case, no spaces, dashes or underscores) -> canonical column.
HEADER_ALIASES = {
    **dict.fromkeys(
        ["timestamp", "time", "date", "datetime", "opentime", "ts", "unix", "timeopen", "candletime"], "timestamp"
    ),
    **dict.fromkeys(["open", "o", "openprice"], "open"),
    **dict.fromkeys(["high", "h", "highprice"], "high"),
    **dict.fromkeys(["low", "l", "lowprice"], "low"),
    **dict.fromkeys(["close", "c", "closeprice", "last"], "close"),
    **dict.fromkeys(["volume", "vol", "v", "basevolume", "volumebase"], "volume"),
}

TEXT_TIMESTAMP_FORMATS = [
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M",
    "%Y-%m-%dT%H:%M",
    "%Y/%m/%d %H:%M:%S",
    "%Y-%m-%d",
]


def _normalise(header: str) -> str:
    return header.strip().lower().replace(" ", "").replace("_", "").replace("-", "")


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def read_table_bytes(payload: bytes, name: str) -> pl.DataFrame:
    """A CSV (with or without header), gzip CSV, Parquet or zip of CSVs, all columns as text.

    A damaged or foreign file raises CandleFileError naming `name`, never a bare EOFError or BadZipFile."""
    try:
        return _read_table_bytes(payload, name)
    except CandleFileError:
        raise
    except UNREADABLE as error:
        kind = next((k for k in (".csv.gz", ".gz", ".zip", ".parquet", ".csv") if name.lower().endswith(k)), "file")
        raise CandleFileError(
            name,
            "file",
            "readable",
            f"cannot be read as {kind} ({type(error).__name__}: {error}); the rule is a complete, uncorrupted "
            f".csv, .csv.gz, .parquet or .zip of CSVs",
        ) from error


def _read_table_bytes(payload: bytes, name: str) -> pl.DataFrame:
    lower = name.lower()
    if lower.endswith(".zip"):
        with zipfile.ZipFile(io.BytesIO(payload)) as archive:
            members = [m for m in archive.namelist() if m.lower().endswith(".csv")]
            if not members:
                raise CandleFileError(
                    name, "file", "zip_holds_csv", "the zip holds no .csv file; the rule is a zip of CSVs"
                )
            return pl.concat([read_table_bytes(archive.read(m), f"{name}/{m}") for m in members], how="vertical")
    if lower.endswith(".parquet"):
        return pl.read_parquet(io.BytesIO(payload)).cast(pl.String)
    if lower.endswith(".gz"):
        payload = gzip.decompress(payload)
    first_line = payload.split(b"\n", 1)[0].decode("utf-8", errors="replace")
    if "," not in first_line:
        found = next((label for sep, label in OTHER_SEPARATORS.items() if sep in first_line), None)
        if found:
            raise CandleFileError(
                name,
                "separator",
                "comma_separated",
                f"separator: the first line {first_line[:80]!r} is separated by {found}; the rule is comma-separated values",
            )
    first_field = first_line.split(",")[0].strip().strip('"')
    has_header = not _looks_numeric(first_field)
    frame = pl.read_csv(io.BytesIO(payload), has_header=has_header, infer_schema=False, truncate_ragged_lines=True)
    if not has_header:
        if frame.width < 6:
            raise CandleFileError(
                name,
                "columns",
                "binance_kline_columns",
                f"a headerless file needs Binance's kline columns (>= 6), found {frame.width}",
            )
        frame = frame.select(frame.columns[:12]).rename(dict(zip(frame.columns, BINANCE_KLINE_COLUMNS, strict=False)))
    return frame


def to_candles(frame: pl.DataFrame, name: str) -> pl.DataFrame:
    """Map aliases onto canonical columns and parse them. Unparseable prices become null (bronze
    quarantines the row); an unparseable timestamp rejects the file, since the row has no time to file it under."""
    mapping: dict[str, str] = {}
    for column in frame.columns:
        canonical = HEADER_ALIASES.get(_normalise(column))
        if canonical and canonical not in mapping.values():
            mapping[column] = canonical
    missing = [c for c in CANDLE_COLUMNS if c not in mapping.values()]
    if missing:
        raise CandleFileError(
            name,
            ",".join(missing),
            "required_columns",
            f"missing column(s) {missing}; found {frame.columns}. Accepted names: {sorted(k for k in HEADER_ALIASES)}",
        )
    frame = frame.select(pl.col(src).cast(pl.String).str.strip_chars().alias(dst) for src, dst in mapping.items())
    parsed = frame.with_columns(
        parse_timestamp(pl.col("timestamp")).alias("timestamp"),
        *(pl.col(c).cast(pl.Float64, strict=False) for c in CANDLE_COLUMNS[1:]),
    )
    bad = parsed.with_row_index("row").filter(pl.col("timestamp").is_null())
    if bad.height:
        row = bad.row(0, named=True)["row"]
        raise CandleFileError(
            name,
            "timestamp",
            "parseable_timestamp",
            f"timestamp on data row {row + 1} is {frame['timestamp'][row]!r}; the rule is epoch "
            f"seconds/ms/us/ns or a date-time like 2024-01-31 23:00:00, optionally with Z or a +HH:MM offset "
            f"({bad.height} such row(s))",
        )
    return parsed.select(CANDLE_COLUMNS).cast(CANDLE_SCHEMA)  # type: ignore[arg-type]


# A UTC offset after a time of day: "...12:00:00+02:00", "...12:00-0530". Dates alone ("2024-01-31") never match.
OFFSET = r"(\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)\s*([+-])(\d{2}):?(\d{2})$"


def parse_timestamp(text: pl.Expr) -> pl.Expr:
    """Epoch numbers by magnitude (s, ms, us, ns), else ISO-like text; naive text is taken as UTC, and text with an
    offset (+02:00) is converted to UTC row by row, so a file that crosses a DST change reads right."""
    number = text.cast(pl.Float64, strict=False)
    magnitude = number.abs()
    epoch_us = (
        pl.when(magnitude < 1e11)
        .then(number * 1e6)
        .when(magnitude < 1e14)
        .then(number * 1e3)
        .when(magnitude < 1e17)
        .then(number)
        .otherwise(number / 1e3)
    )
    from_epoch = epoch_us.round(0).cast(pl.Int64).cast(pl.Datetime("us", "UTC"))
    sign = pl.when(text.str.extract(OFFSET, 2) == "-").then(-1).otherwise(1)
    offset_minutes = sign * (
        text.str.extract(OFFSET, 3).cast(pl.Int64) * 60 + text.str.extract(OFFSET, 4).cast(pl.Int64)
    ).fill_null(0)
    cleaned = text.str.replace(OFFSET, "${1}").str.replace(r"(Z| UTC)$", "")
    local = pl.coalesce(
        [cleaned.str.to_datetime(fmt, strict=False, time_unit="us", time_zone="UTC") for fmt in TEXT_TIMESTAMP_FORMATS]
    )
    from_text = local - pl.duration(minutes=offset_minutes)
    return pl.when(number.is_not_null()).then(from_epoch).otherwise(from_text)


def read_candle_file(path: Path) -> pl.DataFrame:
    return to_candles(read_table_bytes(path.read_bytes(), path.name), path.name)
