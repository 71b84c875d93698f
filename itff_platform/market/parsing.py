"""Turn vendor exports into the canonical candle frame: header aliases, epoch units, date formats."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import polars as pl

from itff_platform.market.candles import CANDLE_COLUMNS, CANDLE_SCHEMA, CandleFormatError

# Binance archive CSVs carry no header; these are its columns in order.
BINANCE_KLINE_COLUMNS = [
    "open_time", "open", "high", "low", "close", "volume", "close_time",
    "quote_volume", "trades", "taker_buy_base", "taker_buy_quote", "ignore",
]

# Normalised header (lower case, no spaces, dashes or underscores) -> canonical column.
HEADER_ALIASES = {
    **dict.fromkeys(["timestamp", "time", "date", "datetime", "opentime", "ts", "unix", "timeopen", "candletime"], "timestamp"),
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
    """A CSV (with or without header), gzip CSV, Parquet or zip of CSVs, all columns as text."""
    lower = name.lower()
    if lower.endswith(".zip"):
        with zipfile.ZipFile(io.BytesIO(payload)) as archive:
            members = [m for m in archive.namelist() if m.lower().endswith(".csv")]
            if not members:
                raise CandleFormatError(f"{name}: the zip holds no .csv file")
            return pl.concat([read_table_bytes(archive.read(m), m) for m in members], how="vertical")
    if lower.endswith(".parquet"):
        return pl.read_parquet(io.BytesIO(payload)).cast(pl.String)
    if lower.endswith(".gz"):
        import gzip

        payload = gzip.decompress(payload)
    first_line = payload.split(b"\n", 1)[0].decode("utf-8", errors="replace")
    first_field = first_line.split(",")[0].strip().strip('"')
    has_header = not _looks_numeric(first_field)
    frame = pl.read_csv(io.BytesIO(payload), has_header=has_header, infer_schema=False, truncate_ragged_lines=True)
    if not has_header:
        if frame.width < 6:
            raise CandleFormatError(f"{name}: a headerless file needs Binance's kline columns (>= 6), found {frame.width}")
        frame = frame.select(frame.columns[:12]).rename(dict(zip(frame.columns, BINANCE_KLINE_COLUMNS)))
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
        raise CandleFormatError(
            f"{name}: missing column(s) {missing}; found {frame.columns}. "
            f"Accepted names: {sorted(k for k in HEADER_ALIASES)}"
        )
    frame = frame.select(pl.col(src).cast(pl.String).str.strip_chars().alias(dst) for src, dst in mapping.items())
    parsed = frame.with_columns(
        parse_timestamp(pl.col("timestamp")).alias("timestamp"),
        *(pl.col(c).cast(pl.Float64, strict=False) for c in CANDLE_COLUMNS[1:]),
    )
    bad = parsed.with_row_index("row").filter(pl.col("timestamp").is_null())
    if bad.height:
        row = bad.row(0, named=True)["row"]
        raise CandleFormatError(
            f"{name}: timestamp on data row {row + 1} is {frame['timestamp'][row]!r}; the rule is epoch "
            f"seconds/ms/us/ns or a date-time like 2024-01-31 23:00:00 ({bad.height} such row(s))"
        )
    return parsed.select(CANDLE_COLUMNS).cast(CANDLE_SCHEMA)  # type: ignore[arg-type]


def parse_timestamp(text: pl.Expr) -> pl.Expr:
    """Epoch numbers by magnitude (s, ms, us, ns), else ISO-like text; naive text is taken as UTC."""
    number = text.cast(pl.Float64, strict=False)
    magnitude = number.abs()
    epoch_us = (
        pl.when(magnitude < 1e11).then(number * 1e6)
        .when(magnitude < 1e14).then(number * 1e3)
        .when(magnitude < 1e17).then(number)
        .otherwise(number / 1e3)
    )
    from_epoch = epoch_us.round(0).cast(pl.Int64).cast(pl.Datetime("us", "UTC"))
    cleaned = text.str.replace(r"(Z|[+-]00:?00| UTC)$", "")
    from_text = pl.coalesce(
        [cleaned.str.to_datetime(fmt, strict=False, time_unit="us", time_zone="UTC") for fmt in TEXT_TIMESTAMP_FORMATS]
    )
    return pl.when(number.is_not_null()).then(from_epoch).otherwise(from_text)


def read_candle_file(path: Path) -> pl.DataFrame:
    return to_candles(read_table_bytes(path.read_bytes(), path.name), path.name)
