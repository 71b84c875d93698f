"""/predict latency and throughput against a real `bentoml serve`, side by side with a bare FastAPI anchor.

    make run            # champions must exist (or ITFF_HOME pointing at a registry that has them)
    make bench-serve    # installs hey (Debian) if missing

Both servers run at once with 2 workers each: the service (`bentoml serve`, every guarantee on: auth, rate
limit, size limit, prediction log, metrics) and benchmarks/anchor_app.py (FastAPI + uvicorn with httptools,
scoring the same champion and nothing else). hey measures them interleaved, level by level, for
ITFF_BENCH_ROUNDS rounds, so a load spike from elsewhere hits both; the ratio is ITFF / anchor per level. First
the same at concurrency 8 with one worker each: with two, the kernel may hand all of hey's connections to one worker
of one server and spread the other's, and on 2 cores shared with hey that alone moves a ratio (each level prints
its busiest worker's share of the server's CPU).

Then the candle path (/predict with 800 candles, what TradingView sends): hey with one window over and over
(a window the worker has seen, as when several models or clients ask about the same bar), and a client
that slides the window one bar per request (every window new: it is folded from its anchor), and the candle
path's CPU per request in this process (candle_path_cpu). Then the best of three /predict_batch calls of 10,000
rows. Last, feature rows at c=8 again with two workers each and the service's write-ahead log off: what its fsync
before each 200 costs (docs/benchmarks.md, stop 23). The load generator shares the machine's cores with the
servers, so these figures are conservative; the machine's load average is printed beside them."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np

from itff_platform.local_http import answers, free_port

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-token"
DURATION_S = int(os.environ.get("ITFF_BENCH_SECONDS", "10"))
ROUNDS = int(os.environ.get("ITFF_BENCH_ROUNDS", "2"))
WORKERS = 2
CANDLES = 800
SLIDES = int(os.environ.get("ITFF_BENCH_SLIDES", "100"))
BATCH_ROWS = 10_000


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def champion_inputs(symbol: str, target: str) -> tuple[dict, list[dict], object]:
    """(a feature row, the candles to slide windows over, the champion) from the packaged sample."""
    from itff_platform.contracts.champions import ChampionStore
    from itff_platform.features.silver import build_features, feature_columns
    from itff_platform.market.sample import SampleCandleSource
    from itff_platform.settings import Settings

    settings = Settings(symbols=[symbol], targets=[target])
    store = ChampionStore(settings)
    store.refresh()
    model = store.get(symbol, target)
    if model is None:
        sys.exit(f"no champion for {symbol} {target}: run `make run` first")
    candles = SampleCandleSource().fetch(
        symbol, "1h", datetime(2024, 7, 1, tzinfo=UTC), datetime(2024, 10, 1, tzinfo=UTC)
    )
    row = build_features(candles, settings).collect().select(feature_columns(settings)).row(-1, named=True)
    bars = [
        dict(zip(("timestamp", "open", "high", "low", "close", "volume"), (r[0].isoformat(), *r[1:]), strict=True))
        for r in candles.select("timestamp", "open", "high", "low", "close", "volume")
        .tail(CANDLES + SLIDES)
        .iter_rows()
    ]
    return row, bars, model


def server_cpu_s(server: subprocess.Popen | None) -> dict[int, float]:
    """User + system CPU seconds of each of a server's processes (arbiter and workers) so far, by pid."""
    if server is None:
        return {}
    import psutil

    seconds = {}
    root = psutil.Process(server.pid)
    for process in (root, *root.children(recursive=True)):
        try:
            times = process.cpu_times()
            seconds[process.pid] = times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return seconds


def busiest_share(spent: dict[int, float], root: int) -> int | None:
    """The busiest worker's share (%) of a server's workers' CPU over a level. The kernel hands each keep-alive
    connection to whichever worker accepts it first: all of hey's connections can land on one worker, and on these
    2 cores one busy worker beside hey runs faster than two, so a ratio is only like for like where the shares are
    alike. The root process (BentoML's arbiter, uvicorn's supervisor) is left out, unless it is the one worker."""
    spent = {pid: seconds for pid, seconds in spent.items() if pid != root} or spent
    total = sum(spent.values())
    return round(100 * max(spent.values()) / total) if total > 0 else None


def hey(url: str, body: Path, concurrency: int, server: subprocess.Popen | None = None) -> dict:
    before = server_cpu_s(server)
    out = subprocess.run(
        [
            *("hey", "-z", f"{DURATION_S}s", "-c", str(concurrency), "-m", "POST", "-T", "application/json"),
            *("-H", f"X-API-Token: {TOKEN}", "-D", str(body), url),
        ],
        capture_output=True,
        text=True,
    ).stdout
    pct = {p: round(float(v) * 1000, 1) for p, v in re.findall(r"\s+(\d+)% in ([\d.]+) secs", out)}
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    codes = dict(re.findall(r"\[(\d+)\]\s+(\d+) responses", out))
    answered = sum(int(n) for n in codes.values())
    after = server_cpu_s(server)
    spent = {pid: after[pid] - before.get(pid, 0.0) for pid in after}
    return {
        "concurrency": concurrency,
        "requests_per_s": round(rps),
        "p50_ms": pct.get("50"),
        "p95_ms": pct.get("95"),
        "p99_ms": pct.get("99"),
        "status_codes": codes,
        # The servers' own CPU per request: what a request costs them, whatever else the machine runs.
        "server_cpu_us_per_request": round(sum(spent.values()) / answered * 1e6) if server else None,
        "busiest_process_cpu_share_percent": busiest_share(spent, server.pid) if server else None,
        "load_average": load_average(),
    }


def start(command: list[str], env: dict, url: str, name: str) -> subprocess.Popen:
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if answers(url, server, timeout_s=120, interval_s=1):
        return server
    if server.poll() is not None:
        sys.exit(f"{name} exited with {server.returncode} before answering")
    stop([server])
    sys.exit(f"{name} did not answer {url} in 120 s")


def sliding_windows(url: str, symbol: str, target: str, bars: list[dict]) -> dict:
    """One client, a window one bar later per request: each window is new to the service."""
    times = []
    with httpx.Client(headers={"X-API-Token": TOKEN}, timeout=30) as client:
        for i in range(SLIDES):
            body = json.dumps({"symbol": symbol, "target": target, "candles": bars[i : i + CANDLES]}).encode()
            started = time.perf_counter()
            answer = client.post(f"{url}/predict", content=body, headers={"Content-Type": "application/json"})
            times.append(time.perf_counter() - started)
            if answer.status_code != 200:
                raise RuntimeError(f"/predict with candles answered {answer.status_code}: {answer.text[:300]}")
    return {
        "requests": SLIDES,
        "p50_ms": round(statistics.median(times) * 1000, 1),
        "p95_ms": round(float(np.percentile(times, 95)) * 1000, 1),
        "load_average": load_average(),
    }


def candle_path_cpu(symbol: str, target: str, bars: list[dict], model) -> dict:
    """CPU microseconds per /predict-with-candles request in this process, through the functions the service
    calls (the fast route's body reading, then the online features), without HTTP, BentoML or the model call:
    one window repeated (each request a fresh copy of the same bytes, as a socket gives), a window sliding one
    bar per request (folded from its anchor), and the same slides computed whole by build_features (what every
    new window cost before folding). CPU time includes polars' threads."""
    from itff_platform.serving import candle_windows, online
    from itff_platform.serving.fast_predict import FastPredictRoute
    from itff_platform.settings import Settings

    settings = Settings(symbols=[symbol], targets=[target])
    rows, names = model.forecaster.context_rows + 1, model.meta["features"]
    interval = online.model_interval(model, settings)
    bodies = [
        json.dumps({"symbol": symbol, "target": target, "candles": bars[i : i + CANDLES]}).encode()
        for i in range(SLIDES)
    ]

    def per_request(answer, bodies: list[bytes]) -> float:
        candle_windows.ONLINE = candle_windows.OnlineFeatures()
        route = FastPredictRoute(app=None, handler=None)  # type: ignore[arg-type]
        answer(route, bodies[0])  # the first window (and its anchor) is computed before the clock starts
        started = time.process_time()
        for body in bodies[1:]:
            answer(route, bytes(bytearray(body)))
        return round((time.process_time() - started) / (len(bodies) - 1) * 1e6)

    def remembered(route, body):
        frame = route.arguments(body)["candles"]
        return candle_windows.remembered_features(frame, settings, rows, names, interval)

    def computed(route, body):
        return candle_windows.features_from_candles(route.arguments(body)["candles"], settings, rows, names, interval)

    def whole(route, body):
        frame = route.arguments(body)["candles"]
        online.check_window(frame, interval)
        return candle_windows.OnlineFeatures().rows(frame, settings, interval)

    return {
        "same_window_cpu_us": per_request(remembered, [bodies[-1]] * 200),
        "sliding_window_cpu_us": per_request(computed, bodies),
        "sliding_window_whole_recompute_cpu_us": per_request(whole, bodies),
        "load_average": load_average(),
    }


def batch(url: str, symbol: str, target: str, row: dict) -> float:
    # The body is encoded before the clock starts: the figure is the server's, not the client's json.dumps.
    body = json.dumps({"symbol": symbol, "target": target, "rows": [list(row.values())] * BATCH_ROWS}).encode()
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        answer = httpx.post(
            f"{url}/predict_batch",
            content=body,
            timeout=60,
            headers={"X-API-Token": TOKEN, "Content-Type": "application/json"},
        )
        best = min(best, time.perf_counter() - started)
        if answer.status_code != 200 or len(answer.json()["prob_up"]) != BATCH_ROWS:
            raise RuntimeError(f"/predict_batch answered {answer.status_code}: {answer.text[:300]}")
    return best


def benched_model() -> tuple[str, str]:
    """ITFF_BENCH_SYMBOL/ITFF_BENCH_TARGET, else the first champion with a probability (the anchor scores a
    classifier): which models make run serves depends on what promotion accepted on this sample."""
    if "ITFF_BENCH_SYMBOL" in os.environ or "ITFF_BENCH_TARGET" in os.environ:
        return os.environ.get("ITFF_BENCH_SYMBOL", "BTCUSDT"), os.environ.get("ITFF_BENCH_TARGET", "level_up")
    from itff_platform.settings import get_settings
    from itff_platform.training.promotion import champion_versions

    classifiers = sorted(key for key in champion_versions(get_settings()) if key[1] != "forward_return")
    if not classifiers:
        sys.exit("no champion with a probability in the registry: run make run first, or set ITFF_BENCH_SYMBOL/TARGET")
    return classifiers[0]


@contextlib.contextmanager
def both_servers(
    symbol: str, target: str, workers: int, write_ahead: bool = True
) -> Iterator[tuple[str, str, list[subprocess.Popen]]]:
    """The service and the anchor, `workers` each, running side by side; stopped on leaving. `write_ahead=False`
    turns the service's write-ahead log off (ITFF_PREDICTION_LOG_WRITE_AHEAD), to measure what it costs."""
    port, anchor_port = free_port(), free_port()
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "ITFF_API_TOKENS": json.dumps([TOKEN]),
        "ITFF_SYMBOLS": json.dumps([symbol]),
        "ITFF_TARGETS": json.dumps([target]),
        "ITFF_SERVE_WORKERS": str(workers),
        "ITFF_RATE_LIMIT_PER_MINUTE": "100000000",
        "ITFF_RATE_LIMIT_BURST": "100000000",
        "ITFF_RELOAD_INTERVAL_S": "0",
        "BENTOML_DO_NOT_TRACK": "true",
        "ITFF_MAX_REQUEST_BYTES": str(50_000_000),  # the 10,000-row batch is ~5 MB of JSON
        # Its own BENTOML_HOME, as make serve gives each port: a shared one would wipe a running service's metrics.
        "BENTOML_HOME": str(ROOT / ".bentoml" / str(port)),
        "ITFF_BENCH_SYMBOL": symbol,
        "ITFF_BENCH_TARGET": target,
        "ITFF_PREDICTION_LOG_WRITE_AHEAD": str(write_ahead).lower(),
    }
    env.pop("ITFF_SERVING__PREDICTION_LOG_WRITE_AHEAD", None)  # the nested name would win over the flat one
    url, anchor_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{anchor_port}"
    service_cmd = [str(bin_dir / "bentoml"), "serve", "itff_platform.serving.service:ItffService"]
    service_cmd += ["--host", "127.0.0.1", "--port", str(port)]
    anchor_cmd = [str(bin_dir / "uvicorn"), "anchor_app:app", "--app-dir", str(ROOT / "benchmarks")]
    anchor_cmd += ["--http", "httptools", "--workers", str(workers), "--no-access-log", "--log-level", "warning"]
    anchor_cmd += ["--host", "127.0.0.1", "--port", str(anchor_port)]
    servers = [start(service_cmd, env, f"{url}/readyz", "bentoml serve")]
    try:
        servers.append(start(anchor_cmd, env, f"{anchor_url}/docs", "the FastAPI anchor"))
        yield url, anchor_url, servers
    finally:
        stop(servers)


def stop(servers: list[subprocess.Popen]) -> None:
    """Terminate every server, then wait for each; one that does not stop in 30 s is killed, workers included."""
    import psutil

    for server in servers:
        server.terminate()
    for server in servers:
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            workers: list = []
            with contextlib.suppress(psutil.NoSuchProcess):
                workers = psutil.Process(server.pid).children(recursive=True)
            for process in workers:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.kill()
            server.kill()
            server.wait()


def compared(url: str, anchor_url: str, servers: list, body: Path, levels: tuple[int, ...]) -> list[dict]:
    """hey on the service and the anchor in turn, level by level, ROUNDS times: each pair with its ratio."""
    hey(f"{url}/predict", body, 8)  # warm-up, both
    hey(f"{anchor_url}/predict", body, 8)
    rows: dict[int, list] = {c: [] for c in levels}
    for _ in range(ROUNDS):
        for c in levels:
            rows[c].append(
                {
                    "itff": hey(f"{url}/predict", body, c, servers[0]),
                    "anchor": hey(f"{anchor_url}/predict", body, c, servers[1]),
                }
            )
    return [
        {**pair, "ratio": round(pair["itff"]["requests_per_s"] / pair["anchor"]["requests_per_s"], 2)}
        for c in levels
        for pair in rows[c]
    ]


def main() -> None:
    if shutil.which("hey") is None:
        sys.exit("hey is missing: apt-get install -y hey (make bench-serve does this)")
    symbol, target = benched_model()
    row, bars, model = champion_inputs(symbol, target)
    x = np.asarray([list(row.values())])
    calls = []
    for _ in range(2000):
        started = time.perf_counter()
        model.predict(x)
        calls.append(time.perf_counter() - started)
    in_process = {
        "p50_ms": round(statistics.median(calls) * 1000, 3),
        "p95_ms": round(float(np.percentile(calls, 95)) * 1000, 3),
    }
    candle_cpu = candle_path_cpu(symbol, target, bars, model)

    with tempfile.TemporaryDirectory() as scratch:
        body, window = Path(scratch) / "row.json", Path(scratch) / "candles.json"
        body.write_text(json.dumps({"symbol": symbol, "target": target, "features": row}))
        window.write_text(json.dumps({"symbol": symbol, "target": target, "candles": bars[-CANDLES:]}))
        # One worker each first: no connection spread to differ between the two servers (see busiest_share).
        with both_servers(symbol, target, workers=1) as (url, anchor_url, servers):
            one_worker = compared(url, anchor_url, servers, body, (8,))
        with both_servers(symbol, target, workers=WORKERS) as (url, anchor_url, servers):
            feature_rows = compared(url, anchor_url, servers, body, (1, 8, 32))
            candle_levels = [hey(f"{url}/predict", window, c) for c in (1, 8, 32)]
            slides = sliding_windows(url, symbol, target, bars)
            batch_s = batch(url, symbol, target, row)
        # The same at c=8 without the write-ahead log: what its fdatasync before each 200 costs (one per 1.7-1.8
        # requests here, each waking the loop from another thread), the one guarantee the anchor has no part of.
        with both_servers(symbol, target, workers=WORKERS, write_ahead=False) as (url, anchor_url, servers):
            no_write_ahead = compared(url, anchor_url, servers, body, (8,))
    result = {
        "machine": f"{platform.node()} | {os.cpu_count()} CPUs | {platform.machine()} | Python {sys.version.split()[0]}",
        "model": f"{model.name} v{model.version} ({model.family})",
        "workers": WORKERS,
        "duration_s_per_level": DURATION_S,
        "in_process_model_call": in_process,
        "predict_feature_row": feature_rows,
        "predict_feature_row_one_worker_each": one_worker,
        "predict_feature_row_write_ahead_off": no_write_ahead,
        "predict_candles_same_window": candle_levels,
        "predict_candles_sliding_window": slides,
        "candle_path_in_process": candle_cpu,
        "batch_rows": BATCH_ROWS,
        "batch_best_of_3_s": round(batch_s, 3),
        "batch_rows_per_s": round(BATCH_ROWS / batch_s),
    }
    out = ROOT / "benchmarks" / "results" / "serve.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    for title, pairs in (
        (f"both with {WORKERS} workers", feature_rows),
        ("one worker each (no connection spread to differ)", one_worker),
        (
            f"both with {WORKERS} workers, ITFF's write-ahead log off (what its fsync before each 200 costs)",
            no_write_ahead,
        ),
    ):
        print(f"\n/predict, feature row: ITFF vs the FastAPI anchor, {title}, interleaved")
        print(
            "| concurrency | ITFF | anchor | ratio | server CPU per request, ITFF / anchor "
            "| busiest worker's CPU share, ITFF / anchor | load average |"
        )
        print("|---|---|---|---|---|---|---|")
        for pair in pairs:
            a, b = pair["itff"], pair["anchor"]
            print(
                f"| {a['concurrency']} | {a['requests_per_s']:,} req/s, p95 {a['p95_ms']} ms | "
                f"{b['requests_per_s']:,} req/s, p95 {b['p95_ms']} ms | {pair['ratio']}x | "
                f"{a['server_cpu_us_per_request']} / {b['server_cpu_us_per_request']} µs | "
                f"{a['busiest_process_cpu_share_percent']} / {b['busiest_process_cpu_share_percent']} % | "
                f"{a['load_average']} |"
            )
    print(f"\n/predict, {CANDLES} candles")
    for level in candle_levels:
        print(f"  same window, c={level['concurrency']}: {level['requests_per_s']:,} req/s, p95 {level['p95_ms']} ms")
    print(f"  sliding window, c=1 ({SLIDES} new windows): p50 {slides['p50_ms']} ms, p95 {slides['p95_ms']} ms")
    print(
        f"  in process, CPU per request: same window {candle_cpu['same_window_cpu_us']} us, sliding window "
        f"{candle_cpu['sliding_window_cpu_us']} us (computed whole: {candle_cpu['sliding_window_whole_recompute_cpu_us']} us)"
    )
    print(f"/predict_batch: {result['batch_rows_per_s']:,} rows/s")


if __name__ == "__main__":
    main()
