import gzip
import io
import zipfile
from pathlib import Path

import polars as pl
import pytest

from itff_platform.market.candles import CANDLE_SCHEMA, CandleFormatError
from itff_platform.market.files import FilesCandleSource
from itff_platform_tests.conftest import utc

SHARED_1M = Path(__file__).resolve().parents[3] / "shared" / "data" / "binance-spot" / "1m"

BINANCE_ROWS = [
    # open_time(ms), open, high, low, close, volume, close_time, quote, trades, taker base, taker quote, ignore
    "1704067200000,42283.58,42554.57,42261.02,42475.23,1271.68108,1704070799999,0,0,0,0,0",
    "1704070800000,42475.23,42775.00,42431.65,42613.56,1196.37856,1704074399999,0,0,0,0,0",
]


def binance_zip(rows: list[str], inner: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(inner, "\n".join(rows) + "\n")
    return buffer.getvalue()


def test_binance_archive_zip_without_header_and_epoch_milliseconds(tmp_path):
    (tmp_path / "BTCUSDT-1h-2024-01.zip").write_bytes(binance_zip(BINANCE_ROWS, "BTCUSDT-1h-2024-01.csv"))
    frame = FilesCandleSource(tmp_path).fetch("BTCUSDT", "1h", utc(2024, 1, 1), utc(2024, 2, 1))
    assert dict(frame.schema) == CANDLE_SCHEMA
    assert frame["timestamp"].to_list() == [utc(2024, 1, 1, 0), utc(2024, 1, 1, 1)]
    assert frame["close"].to_list() == [42475.23, 42613.56]


def test_binance_2025_archives_in_epoch_microseconds(tmp_path):
    rows = [r.replace("1704067200000,", "1704067200000000,", 1) for r in BINANCE_ROWS[:1]]
    (tmp_path / "BTCUSDT-1h-2025-01.csv").write_text("\n".join(rows))
    frame = FilesCandleSource(tmp_path).fetch("BTCUSDT", "1h", utc(2024, 1, 1), utc(2024, 2, 1))
    assert frame["timestamp"].to_list() == [utc(2024, 1, 1)]


@pytest.mark.parametrize(
    "header, stamp",
    [
        ("Date,Open,High,Low,Close,Volume", "2024-01-01 00:00:00"),
        ("timestamp,open,high,low,close,volume", "2024-01-01T00:00:00Z"),
        ("open_time,o,h,l,c,vol", "1704067200"),
        ("Time, Open Price, High Price, Low Price, Close Price, Base Volume", "2024-01-01T00:00"),
    ],
)
def test_common_vendor_headers_and_timestamp_formats(tmp_path, header, stamp):
    (tmp_path / "ETHUSDT_1h_export.csv").write_text(f"{header}\n{stamp},1,2,0.5,1.5,10\n")
    frame = FilesCandleSource(tmp_path).fetch("ETHUSDT", "1h", utc(2023, 1, 1), utc(2025, 1, 1))
    assert frame.row(0) == (utc(2024, 1, 1), 1.0, 2.0, 0.5, 1.5, 10.0)


def test_gzip_and_parquet_exports_and_only_matching_names(tmp_path):
    (tmp_path / "BTCUSDT-1h-a.csv.gz").write_bytes(gzip.compress(("\n".join(BINANCE_ROWS[:1]) + "\n").encode()))
    pl.DataFrame({"timestamp": ["2024-01-01 01:00:00"], "open": [1.0], "high": [2.0], "low": [0.5], "close": [1.5], "volume": [3.0]}).write_parquet(
        tmp_path / "BTCUSDT-1h-b.parquet"
    )
    (tmp_path / "BTCUSDT-4h-c.csv").write_text("\n".join(BINANCE_ROWS))  # another interval: ignored
    (tmp_path / "ETHUSDT-1h.csv").write_text("\n".join(BINANCE_ROWS))  # another symbol: ignored
    frame = FilesCandleSource(tmp_path).fetch("BTCUSDT", "1h", utc(2024, 1, 1), utc(2024, 2, 1))
    assert frame.height == 2


@pytest.mark.skipif(not SHARED_1M.is_dir(), reason="the shared Binance exports are not beside this checkout")
def test_real_one_minute_binance_export_reads_exactly():
    path = SHARED_1M / "BTCUSDT-1m-2024-02-12.csv.gz"
    frame = FilesCandleSource(SHARED_1M).fetch("BTCUSDT", "1m", utc(2024, 1, 1), utc(2025, 1, 1))
    assert frame.height == 49_999
    assert frame["timestamp"].is_sorted() and frame["timestamp"].dt.second().max() == 0
    assert path.exists()


def test_a_file_without_a_price_column_names_the_column(tmp_path):
    (tmp_path / "BTCUSDT-1h.csv").write_text("timestamp,open,high,low,volume\n2024-01-01 00:00:00,1,2,0.5,10\n")
    with pytest.raises(CandleFormatError, match=r"BTCUSDT-1h.csv: missing column\(s\) \['close'\]"):
        FilesCandleSource(tmp_path).fetch("BTCUSDT", "1h", utc(2024, 1, 1), utc(2024, 2, 1))


def test_an_unparseable_timestamp_names_the_row_and_the_rule(tmp_path):
    (tmp_path / "BTCUSDT-1h.csv").write_text(
        "timestamp,open,high,low,close,volume\n2024-01-01 00:00:00,1,2,0.5,1.5,10\nyesterday noon,1,2,0.5,1.5,10\n"
    )
    with pytest.raises(CandleFormatError, match=r"timestamp on data row 2 is 'yesterday noon'; the rule is epoch"):
        FilesCandleSource(tmp_path).fetch("BTCUSDT", "1h", utc(2024, 1, 1), utc(2024, 2, 1))


def test_a_corrupt_price_arrives_as_null_for_bronze_to_quarantine(tmp_path):
    (tmp_path / "BTCUSDT-1h.csv").write_text("timestamp,open,high,low,close,volume\n2024-01-01 00:00:00,1,2,0.5,#N/A,10\n")
    frame = FilesCandleSource(tmp_path).fetch("BTCUSDT", "1h", utc(2024, 1, 1), utc(2024, 2, 1))
    assert frame.height == 1 and frame["close"][0] is None
