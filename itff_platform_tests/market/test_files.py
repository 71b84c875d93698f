import gzip
import io
import zipfile
from pathlib import Path

import polars as pl
import pytest

from itff_platform.market.candles import CANDLE_SCHEMA
from itff_platform.market.files import FilesCandleSource
from itff_platform.market.parsing import CandleFileError, read_candle_file
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
    pl.DataFrame(
        {
            "timestamp": ["2024-01-01 01:00:00"],
            "open": [1.0],
            "high": [2.0],
            "low": [0.5],
            "close": [1.5],
            "volume": [3.0],
        }
    ).write_parquet(tmp_path / "BTCUSDT-1h-b.parquet")
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
    with pytest.raises(CandleFileError, match=r"BTCUSDT-1h.csv: missing column\(s\) \['close'\]") as error:
        read_candle_file(tmp_path / "BTCUSDT-1h.csv")
    assert (error.value.field, error.value.rule) == ("close", "required_columns")


def test_an_unparseable_timestamp_names_the_row_and_the_rule(tmp_path):
    (tmp_path / "BTCUSDT-1h.csv").write_text(
        "timestamp,open,high,low,close,volume\n2024-01-01 00:00:00,1,2,0.5,1.5,10\nyesterday noon,1,2,0.5,1.5,10\n"
    )
    with pytest.raises(CandleFileError, match=r"timestamp on data row 2 is 'yesterday noon'; the rule is epoch"):
        read_candle_file(tmp_path / "BTCUSDT-1h.csv")


def good_csv(path: Path, stamps: list[str]) -> None:
    path.write_text("timestamp,open,high,low,close,volume\n" + "".join(f"{t},1,2,0.5,1.5,10\n" for t in stamps))


BAD_FILES = {
    # name: (bytes, field, rule, words the reason must hold)
    "BTCUSDT-1h-truncated.csv.gz": (
        lambda: gzip.compress(("\n".join(BINANCE_ROWS) + "\n").encode(), mtime=0)[:-12],
        "file",
        "readable",
        "EOFError",
    ),
    "BTCUSDT-1h-2024-01.zip": (
        lambda: binance_zip(BINANCE_ROWS, "x.csv")[:40] + b"\x00" * 30,
        "file",
        "readable",
        "BadZipFile",
    ),
    "BTCUSDT-1h-semicolons.csv": (
        lambda: b"timestamp;open;high;low;close;volume\n2024-01-01 00:00:00;1;2;0.5;1.5;10\n",
        "separator",
        "comma_separated",
        "semicolons",
    ),
    "BTCUSDT-1h-noclose.csv": (
        lambda: b"timestamp,open,high,low,volume\n2024-01-01 00:00:00,1,2,0.5,10\n",
        "close",
        "required_columns",
        "missing column",
    ),
    "BTCUSDT-1h-words.csv": (
        lambda: b"timestamp,open,high,low,close,volume\nnoon,1,2,0.5,1.5,10\n",
        "timestamp",
        "parseable_timestamp",
        "'noon'",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_a_bad_file_is_set_aside_with_its_reason_and_the_good_file_is_read(tmp_path, name):
    """Before: EOFError/BadZipFile tracebacks without the file's name, and one bad file aborted every fetch."""
    payload, field, rule, words = BAD_FILES[name]
    (tmp_path / name).write_bytes(payload())
    good_csv(tmp_path / "BTCUSDT-1h-good.csv", ["2024-01-01 00:00:00", "2024-01-01 01:00:00"])
    source = FilesCandleSource(tmp_path)

    frame = source.fetch("BTCUSDT", "1h", utc(2024, 1, 1), utc(2024, 2, 1))

    assert frame.height == 2  # the good file went on
    assert [(r.file, r.field, r.rule) for r in source.rejected] == [(name, field, rule)]
    assert name in source.rejected[0].message and words in source.rejected[0].message
    assert not (tmp_path / name).exists() and (tmp_path / "rejected" / name).read_bytes() == payload()
    reason = (tmp_path / "rejected" / f"{name}.reason.txt").read_text()
    assert f"file: {name}" in reason and f"field: {field}" in reason and f"rule: {rule}" in reason and words in reason
    # Set aside once: the next fetch neither reads it nor reports it again.
    again = FilesCandleSource(tmp_path)
    assert again.fetch("BTCUSDT", "1h", utc(2024, 1, 1), utc(2024, 2, 1)).height == 2 and again.rejected == []


def test_utc_offsets_are_converted_to_utc_row_by_row(tmp_path):
    """Before: '+02:00' made every timestamp unparseable and the file was refused."""
    good_csv(
        tmp_path / "ETHUSDT-1h-cest.csv",
        [
            "2024-03-31 00:00:00+01:00",
            "2024-03-31 01:00:00+01:00",
            "2024-03-31 03:00:00+02:00",
            "2024-09-01 02:00:00+02:00",
            "2024-09-01T03:00:00+0200",
            "2024-09-01 01:00:00Z",
        ],
    )
    frame = FilesCandleSource(tmp_path).fetch("ETHUSDT", "1h", utc(2024, 1, 1), utc(2025, 1, 1))
    assert frame["timestamp"].to_list() == [
        utc(2024, 3, 30, 23),
        utc(2024, 3, 31, 0),
        utc(2024, 3, 31, 1),
        utc(2024, 9, 1, 0),
        utc(2024, 9, 1, 1),
        utc(2024, 9, 1, 1),
    ]


def test_a_corrupt_price_arrives_as_null_for_bronze_to_quarantine(tmp_path):
    (tmp_path / "BTCUSDT-1h.csv").write_text(
        "timestamp,open,high,low,close,volume\n2024-01-01 00:00:00,1,2,0.5,#N/A,10\n"
    )
    frame = FilesCandleSource(tmp_path).fetch("BTCUSDT", "1h", utc(2024, 1, 1), utc(2024, 2, 1))
    assert frame.height == 1 and frame["close"][0] is None
