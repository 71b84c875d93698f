"""CPU per /predict feature-row request inside one worker, with no HTTP and no load generator: robust to a busy machine.

    ITFF_HOME=<a home with champions> PYTHONPATH=$PWD python benchmarks/profile_serve_row.py [--layers]

Builds the ASGI app exactly as a `bentoml serve` worker does (`service.to_asgi()`: BentoML's metrics, tracing,
timeout and context middlewares around the guard and the fast route), runs its lifespan, then drives POST /predict
with a feature row straight into it on uvloop, `ITFF_BENCH_PROFILE_CONCURRENCY` requests at a time, and prints the CPU
(process time, every thread) per request, and the prediction log's fsyncs per request. The same for
benchmarks/anchor_app.py (the bare FastAPI endpoint make bench-serve compares against), so the two figures differ
by what the service adds, not by the HTTP server both run under. With --layers, the CPU per request entering the
stack at each layer, and of the answer's pieces alone: the differences are what each layer costs. (cProfile
misattributes coroutines that suspend, so it is not used.)"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

TOKEN = "bench-token"
REQUESTS = int(os.environ.get("ITFF_BENCH_PROFILE_REQUESTS", "2000"))
ROUNDS = int(os.environ.get("ITFF_BENCH_PROFILE_ROUNDS", "3"))
CONCURRENCY = int(os.environ.get("ITFF_BENCH_PROFILE_CONCURRENCY", "8"))


def environment(symbol: str, target: str) -> None:
    os.environ.update(
        {
            "ITFF_API_TOKENS": json.dumps([TOKEN]),
            "ITFF_SYMBOLS": json.dumps([symbol]),
            "ITFF_TARGETS": json.dumps([target]),
            "ITFF_SERVE_WORKERS": "2",
            "ITFF_RATE_LIMIT_PER_MINUTE": "100000000",
            "ITFF_RATE_LIMIT_BURST": "100000000",
            "ITFF_RELOAD_INTERVAL_S": "0",
            "BENTOML_DO_NOT_TRACK": "true",
            "BENTOML_HOME": tempfile.mkdtemp(prefix="itff-profile-bentoml-"),
            "ITFF_BENCH_SYMBOL": symbol,
            "ITFF_BENCH_TARGET": target,
        }
    )


def service_app():
    """The ASGI app one worker of `bentoml serve` runs (see _bentoml_impl/worker/service.py)."""
    from _bentoml_impl.loader import load
    from bentoml._internal.context import server_context

    service = load("itff_platform.serving.service:ItffService", standalone_load=True)
    server_context.service_type = "entry_service"
    server_context.service_name = service.name
    return service.to_asgi(is_main=True)


def anchor():
    sys.path.insert(0, str(Path(__file__).parent))
    from anchor_app import app

    return app


RUNNING: list[asyncio.Future] = []  # the lifespans, referenced until the end


async def lifespan(app) -> asyncio.Queue:
    """Start the app's lifespan (the service's __init__ runs there); the queue ends it."""
    inbox: asyncio.Queue = asyncio.Queue()
    started = asyncio.get_running_loop().create_future()
    await inbox.put({"type": "lifespan.startup"})

    async def send(message):
        if message["type"].startswith("lifespan.startup") and not started.done():
            started.set_result(message)

    RUNNING.append(
        asyncio.ensure_future(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get, send))
    )
    message = await started
    assert message["type"] == "lifespan.startup.complete", message
    return inbox


async def one(app, body: bytes, state: dict) -> int:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/predict",
        "raw_path": b"/predict",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1:3000"),
            (b"user-agent", b"hey/0.0.1"),
            (b"content-type", b"application/json"),
            (b"x-api-token", TOKEN.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"accept-encoding", b"gzip"),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 3000),
        "state": dict(state),
    }
    sent = False
    status = 0

    async def receive():
        nonlocal sent
        if sent:
            await asyncio.sleep(3600)  # as a live connection does: no disconnect while the answer is written
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def drive(app, body: bytes, requests: int, concurrency: int) -> float:
    """CPU seconds per request through an ASGI app, `concurrency` requests in flight."""

    async def request() -> None:
        status = await one(app, body, {})
        assert status == 200, status

    return await cpu_per_call(request, requests, concurrency)


async def cpu_per_call(call, requests: int, concurrency: int) -> float:
    """CPU seconds (every thread of the process: the log's fsync thread too) per `await call()`."""

    async def client(n: int) -> None:
        for _ in range(n):
            await call()

    await asyncio.gather(*(client(requests // concurrency) for _ in range(concurrency)))  # warm-up
    best, fsyncs = float("inf"), 0
    for _ in range(ROUNDS):  # the least of a few rounds: another process's burst only ever adds
        FSYNCS.clear()
        started = time.process_time()
        await asyncio.gather(*(client(requests // concurrency) for _ in range(concurrency)))
        spent = time.process_time() - started
        if spent < best:
            best, fsyncs = spent, len(FSYNCS)
    FSYNC_SHARE.append(fsyncs / (requests // concurrency * concurrency))
    return best / (requests // concurrency * concurrency)


# One entry per fsync or fdatasync since the last clear: the prediction log's group commits, and each Delta flush's
# zero fill of the next segment (one per flush_rows rows, so ~0.0002 per request at the default 5,000).
FSYNCS: list[int] = []
FSYNC_SHARE: list[float] = []  # fsyncs per request, per measurement
_fsync, _fdatasync = os.fsync, os.fdatasync


def counted_fsync(fd: int) -> None:
    FSYNCS.append(fd)
    _fsync(fd)


def counted_fdatasync(fd: int) -> None:
    FSYNCS.append(fd)
    _fdatasync(fd)


os.fsync, os.fdatasync = counted_fsync, counted_fdatasync


def inner(app, kind: type):
    """The middleware of type `kind` in a built Starlette stack."""
    layer = app.middleware_stack
    while not isinstance(layer, kind):
        layer = layer.app
    return layer


async def layers(app, body: bytes) -> dict[str, float]:
    """CPU µs per request entering the worker's stack at each layer, inner layers alone: each difference is
    what a layer costs. Every layer still answers 200 and logs the prediction."""
    import bentoml

    from itff_platform.serving.fast_predict import FastPredictRoute, plain_arguments
    from itff_platform.serving.guard import GuardMiddleware

    service = bentoml.get_current_service()
    arguments = plain_arguments(body)
    assert arguments is not None
    model, x, regime, at = await service._inputs(
        arguments["symbol"].upper(), arguments.get("target", "direction"), arguments["features"], None, None, None
    )

    async def answer() -> None:
        await service._answer(model, x, regime, at, 0.0, "/predict")

    async def scored() -> None:
        await service.batcher.predict(model, x)

    from itff_platform.contracts.answers import build_answer, log_record
    from itff_platform.serving.service import answered

    out, spread = model.predict(x)

    async def built() -> None:
        answer = build_answer(model, x, out, spread, regime, at, max_age_days=30.0)
        answer["request_id"] = "0" * 32
        answered(answer)
        log_record(answer, x, "0" * 32, "/predict", 1.0)

    record = log_record(build_answer(model, x, out, spread, regime, at, max_age_days=30.0), x, "0" * 32, "/p", 1.0)

    async def logged() -> None:
        await service.prediction_log.append_durable(dict(record))

    async def handler() -> None:
        response = await service.answer_predict(**arguments)
        assert response.status_code == 200, response.body

    entries = {
        "worker app (BentoML's middlewares, the guard, the route)": lambda: drive(app, body, REQUESTS, CONCURRENCY),
        "the guard and in": lambda: drive(inner(app, GuardMiddleware), body, REQUESTS, CONCURRENCY),
        "the fast route and in": lambda: drive(inner(app, FastPredictRoute), body, REQUESTS, CONCURRENCY),
        "answer_predict (inputs, answer, log, response)": lambda: cpu_per_call(handler, REQUESTS, CONCURRENCY),
        "_answer (score, answer, metrics, log)": lambda: cpu_per_call(answer, REQUESTS, CONCURRENCY),
        "the answer, its JSON and its log record": lambda: cpu_per_call(built, REQUESTS, CONCURRENCY),
        "the prediction log (write-ahead, fsync)": lambda: cpu_per_call(logged, REQUESTS, CONCURRENCY),
        "the batcher (model calls)": lambda: cpu_per_call(scored, REQUESTS, CONCURRENCY),
        "model.predict, one row alone": lambda: cpu_per_call(
            lambda: asyncio.sleep(0, model.predict(x)), REQUESTS, CONCURRENCY
        ),
    }
    return {name: round(await measure() * 1e6, 1) for name, measure in entries.items()}


def main() -> None:
    import uvloop

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_serve import benched_model, champion_inputs

    from itff_platform.settings import get_settings

    symbol, target = benched_model()
    environment(symbol, target)
    get_settings.cache_clear()  # benched_model read the settings before the service's environment was set
    row, _, model = champion_inputs(symbol, target)
    body = json.dumps({"symbol": symbol, "target": target, "features": row}).encode()
    by_layer: dict[str, float] = {}

    async def run() -> dict:
        figures = {}
        for name, app in (("itff", service_app()), ("anchor", anchor())):
            inbox = await lifespan(app)
            figures[name] = round(await drive(app, body, REQUESTS, CONCURRENCY) * 1e6, 1)
            if name == "itff" and "--layers" in sys.argv:
                by_layer.update(await layers(app, body))
            await inbox.put({"type": "lifespan.shutdown"})
        return figures

    figures = uvloop.run(run())
    print(
        json.dumps(
            {
                "model": f"{model.name} v{model.version} ({model.family})",
                "requests": REQUESTS,
                "concurrency": CONCURRENCY,
                "cpu_us_per_request": figures,
                "ratio": round(figures["anchor"] / figures["itff"], 2),
                "itff_fsyncs_per_request": round(FSYNC_SHARE[0], 3),
                "itff_cpu_us_per_request_by_entry_layer": by_layer,
                "load_average": " ".join(f"{v:.2f}" for v in os.getloadavg()),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
