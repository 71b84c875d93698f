"""The fast /predict route reads plain bodies exactly as BentoML's input model does, and hands anything else to it."""

import json

import pytest
from pydantic import TypeAdapter

from itff_platform.serving.fast_predict import plain_arguments
from itff_platform.serving.online import Candle, candle_frame

FIELDS = ("timestamp", "open", "high", "low", "close", "volume")


@pytest.fixture(scope="module")
def window(btc_hourly) -> list[dict]:
    rows = btc_hourly.select(FIELDS).tail(50).iter_rows()
    return [dict(zip(FIELDS, (r[0].isoformat(), *r[1:]), strict=True)) for r in rows]


def test_plain_candles_become_the_frame_pydantic_and_candle_frame_make(window):
    spelled = [
        c | {"timestamp": c["timestamp"].replace("+00:00", suffix)}
        for c, suffix in zip(window, ["+00:00", "Z", "", ".000000Z"] * 20, strict=False)
    ]
    spelled[3]["volume"] = 7  # an integer is a number too
    fast = plain_arguments(json.dumps({"symbol": "BTCUSDT", "candles": spelled}).encode())
    assert fast is not None
    slow = candle_frame(TypeAdapter(list[Candle]).validate_python(spelled))
    assert fast["candles"].schema == slow.schema and fast["candles"].equals(slow)


@pytest.mark.parametrize(
    "change",
    [
        {"timestamp": "2024-01-01T01:00:00+01:00"},  # an offset: pydantic converts it
        {"timestamp": 1704067200},  # Unix seconds
        {"timestamp": "2024-02-30T00:00:00Z"},  # no such day: pydantic names the field
        {"timestamp": "2024-01-01 00:00:00"},
        {"timestamp": "0000-12-31T23:00:00Z"},  # numpy has a year 0; Python and pydantic do not
        {"open": "1.5"},  # a string, which strict Number refuses
        {"open": True},
        {"high": None},
        {"close": 2**60},  # not exactly a float
    ],
)
def test_a_candle_that_is_not_plain_goes_the_pydantic_way(window, change):
    candles = [dict(c) for c in window]
    candles[7] |= change
    assert plain_arguments(json.dumps({"symbol": "BTCUSDT", "candles": candles}).encode()) is None


@pytest.mark.parametrize(
    "body",
    [
        b'{"symbol": "BTCUSDT", "features": [1.0, NaN]}',
        b'{"symbol": "BTCUSDT", "features": {"a": Infinity}}',
        b'{"symbol": "BTCUSDT", "features": [1.0, true]}',
        b'{"symbol": "BTCUSDT", "features": "1.0"}',
        b'{"symbol": 3, "features": [1.0]}',
        b'{"symbol": "BTCUSDT", "target": null, "features": [1.0]}',
        b'{"symbol": "BTCUSDT", "features": [1.0], "extra": 1}',
        b'{"symbol": "BTCUSDT", "candles": [[1, 2, 3]]}',
        b'{"symbol": "BTCUSDT", "candles": [{"timestamp": "2024-01-01T00:00:00Z"}]}',
        b"[1, 2]",
        b"",
        b"{not json",
    ],
)
def test_a_body_that_is_not_plain_goes_the_pydantic_way(body):
    assert plain_arguments(body) is None


def test_a_plain_feature_row_is_read_as_is():
    body = b'{"symbol": "BTCUSDT", "target": "direction", "features": {"a": 1, "b": -2.5}, "bar_time": null}'
    assert plain_arguments(body) == {
        "symbol": "BTCUSDT",
        "target": "direction",
        "features": {"a": 1, "b": -2.5},
        "bar_time": None,
    }
