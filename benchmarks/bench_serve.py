"""/predict latency and throughput against a real `bentoml serve`, beside the in-process model call.

    make run            # champions must exist
    make bench-serve    # installs hey (Debian) if missing

Concurrency 1, 8 and 32 with hey, a feature-row body; then the best of three /predict_batch calls of 10,000 rows.
The load generator runs on the same 2 cores as the server, so these figures are conservative."""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-token"
DURATION_S = int(os.environ.get("ITFF_BENCH_SECONDS", "10"))
BATCH_ROWS = 10_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def champion_row(symbol: str, target: str) -> tuple[dict, object]:
    from datetime import datetime

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
        symbol, "1h", datetime(2024, 8, 1, tzinfo=UTC), datetime(2024, 10, 1, tzinfo=UTC)
    )
    row = build_features(candles, settings).collect().select(feature_columns(settings)).row(-1, named=True)
    return row, model


def hey(url: str, body: Path, concurrency: int) -> dict:
    out = subprocess.run(
        [
            "hey",
            "-z",
            f"{DURATION_S}s",
            "-c",
            str(concurrency),
            "-m",
            "POST",
            "-T",
            "application/json",
            "-H",
            f"X-API-Token: {TOKEN}",
            "-D",
            str(body),
            url,
        ],
        capture_output=True,
        text=True,
    ).stdout
    pct = {p: round(float(v) * 1000, 1) for p, v in re.findall(r"\s+(\d+)% in ([\d.]+) secs", out)}
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    codes = dict(re.findall(r"\[(\d+)\]\s+(\d+) responses", out))
    return {
        "concurrency": concurrency,
        "requests_per_s": round(rps),
        "p50_ms": pct.get("50"),
        "p95_ms": pct.get("95"),
        "p99_ms": pct.get("99"),
        "status_codes": codes,
    }


def main() -> None:
    if shutil.which("hey") is None:
        sys.exit("hey is missing: apt-get install -y hey (make bench-serve does this)")
    symbol, target = os.environ.get("ITFF_BENCH_SYMBOL", "ETHUSDT"), os.environ.get("ITFF_BENCH_TARGET", "direction")
    row, model = champion_row(symbol, target)
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

    port = free_port()
    env = {
        **os.environ,
        "ITFF_API_TOKENS": json.dumps([TOKEN]),
        "ITFF_SYMBOLS": json.dumps([symbol]),
        "ITFF_TARGETS": json.dumps([target]),
        "ITFF_RATE_LIMIT_PER_MINUTE": "100000000",
        "ITFF_RATE_LIMIT_BURST": "100000000",
        "ITFF_RELOAD_INTERVAL_S": "0",
        "BENTOML_DO_NOT_TRACK": "true",
        "ITFF_MAX_REQUEST_BYTES": str(50_000_000),  # the 10,000-row batch is ~5 MB of JSON
        # Its own BENTOML_HOME, as make serve gives each port: a shared one would wipe a running service's metrics.
        "BENTOML_HOME": str(ROOT / ".bentoml" / str(port)),
    }
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "bentoml"),
            "serve",
            "itff_platform.serving.service:ItffService",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if (
                    httpx.get(f"{url}/readyz", timeout=2).status_code == 200
                ):  # the bare probe; POST lists models, with a token
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        with tempfile.TemporaryDirectory() as scratch:
            body = Path(scratch) / "body.json"
            body.write_text(json.dumps({"symbol": symbol, "target": target, "features": row}))
            hey(f"{url}/predict", body, 8)  # warm-up
            levels = [hey(f"{url}/predict", body, c) for c in (1, 8, 32)]
        # The body is encoded before the clock starts: the figure is the server's, not the client's json.dumps.
        body = json.dumps({"symbol": symbol, "target": target, "rows": [list(row.values())] * BATCH_ROWS}).encode()
        batch_s = []
        for _ in range(3):
            started = time.perf_counter()
            answer = httpx.post(
                f"{url}/predict_batch",
                content=body,
                timeout=60,
                headers={"X-API-Token": TOKEN, "Content-Type": "application/json"},
            )
            batch_s.append(time.perf_counter() - started)
            if answer.status_code != 200 or len(answer.json()["prob_up"]) != BATCH_ROWS:
                raise RuntimeError(f"/predict_batch answered {answer.status_code}: {answer.text[:300]}")
        batch_s = min(batch_s)
    finally:
        server.terminate()
        server.wait(timeout=30)
    result = {
        "machine": f"{platform.node()} | {os.cpu_count()} CPUs | {platform.machine()} | Python {sys.version.split()[0]}",
        "model": f"{model.name} v{model.version} ({model.family})",
        "duration_s_per_level": DURATION_S,
        "in_process_model_call": in_process,
        "predict": levels,
        "batch_rows": BATCH_ROWS,
        "batch_best_of_3_s": round(batch_s, 3),
        "batch_rows_per_s": round(BATCH_ROWS / batch_s),
    }
    out = ROOT / "benchmarks" / "results" / "serve.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
