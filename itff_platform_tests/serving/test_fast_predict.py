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


def test_the_route_reads_a_body_in_chunks_and_remembers_it_by_its_bytes(window):
    """Driven in-process: the body arrives in pieces, is parsed once, and a second, equal body (another bytes
    object) is answered from the parsed arguments the first left."""
    import anyio

    from itff_platform.serving.fast_predict import FastPredictRoute

    body = json.dumps({"symbol": "BTCUSDT", "candles": window * 3}).encode()
    assert len(body) > 4096  # remembered bodies only
    calls = []

    async def handler(**arguments):
        calls.append(arguments)

        async def response(scope, receive, send):
            await send({"type": "http.response.start", "status": 200, "headers": []})

        return response

    route = FastPredictRoute(app=None, handler=handler)

    async def post(data: bytes) -> None:
        pieces = [data[i : i + 1000] for i in range(0, len(data), 1000)]
        messages = iter(
            [{"type": "http.request", "body": p, "more_body": i < len(pieces) - 1} for i, p in enumerate(pieces)]
        )

        async def receive():
            return next(messages)

        async def send(message):
            pass

        await route({"type": "http", "path": "/predict", "method": "POST"}, receive, send)

    anyio.run(post, body)
    anyio.run(post, bytes(bytearray(body)))
    assert len(calls) == 2 and calls[1]["candles"] is calls[0]["candles"]  # parsed once
    assert calls[0]["candles"].equals(plain_arguments(body)["candles"])


def test_remembered_bodies_are_bounded_by_their_bytes(window):
    """64 bodies of up to max_request_bytes each were 128 MB a worker: the cache is bounded by bytes too."""
    from itff_platform.serving.fast_predict import FastPredictRoute

    route = FastPredictRoute(app=None, handler=None, kept_bytes=3 * 8192)  # type: ignore[arg-type]
    bodies = [json.dumps({"symbol": f"BTC{i}", "candles": window}).encode() for i in range(6)]
    for body in bodies:
        assert route.arguments(body) is not None
    assert 0 < route._bytes == sum(map(len, route._bodies)) <= 3 * 8192 and len(route._bodies) < len(bodies)
    assert route.arguments(bodies[-1]) is route._bodies[bodies[-1]]  # the newest is still remembered
