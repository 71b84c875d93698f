"""CPU of the prediction log's Delta append (each service worker's flush), and its share per request: before (500
rows a flush, Delta's log cleanup at every commit) and now (the default flush_rows, no cleanup at each commit).

    python benchmarks/bench_prediction_log.py [files ...]   # make bench-serve runs it

Builds a table of each size (one commit per file, as the flushes leave it between two compactions) in a
temporary folder, copies it for each way, and times appends on the copy, the median of 6."""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from itff_platform.monitoring.prediction_log import records_frame, write_records
from itff_platform.settings import Settings

REPEATS = 6


def records(n: int, start: int = 0) -> list[dict]:
    now = datetime.now(UTC)
    return [
        {
            "request_id": f"r{start + i}",
            "logged_at": now + timedelta(microseconds=i),
            "endpoint": "/predict",
            "symbol": "BTCUSDT",
            "target": "direction",
            "model_version": "1",
            "family": "logistic",
            "regime": "neutral",
            "signal": "hold",
            "prob_up": 0.5,
            "threshold": 0.55,
            "allow": True,
            "latency_ms": 1.0,
            "input_sha256": "0" * 64,
        }
        for i in range(n)
    ]


def append_as_before(path: Path, batch: list[dict]) -> None:
    from deltalake import write_deltalake

    write_deltalake(str(path), records_frame(batch).to_arrow(), mode="append", partition_by=["day"])


def append_ms(table: Path, append, rows: int) -> float:
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "copy"
        shutil.copytree(table, path)
        spent = []
        for i in range(REPEATS):
            batch = records(rows, 10**6 * (i + 1))
            started = time.process_time()  # every thread's CPU: delta-rs writes on its own
            append(path, batch)
            spent.append(time.process_time() - started)
    return round(1000 * statistics.median(spent), 1)


def measure(files: int, rows_now: int) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        table = Path(scratch) / "predictions"
        for i in range(files):
            write_records(table, records(1, i))
        before = append_ms(table, append_as_before, 500)
        now = append_ms(table, write_records, rows_now)
    return {"files": files, "before": {"rows": 500, "ms": before}, "now": {"rows": rows_now, "ms": now}}


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [20, 300]
    results = [measure(files, Settings().serving.prediction_log_flush_rows) for files in sizes]
    print(json.dumps(results, indent=2))
    print("\nprediction log: one Delta append (CPU, median of 6) and its share per request")
    print("| table files | before: 500 rows, log cleanup per commit | now: default flush_rows, no cleanup |")
    print("|---|---|---|")
    for r in results:
        cells = [
            f"{r[way]['ms']} ms per {r[way]['rows']:,} rows = {1000 * r[way]['ms'] / r[way]['rows']:.0f} µs/request"
            for way in ("before", "now")
        ]
        print(f"| {r['files']} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
