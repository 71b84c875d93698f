"""bronze -> silver at scale: 10M synthetic 1-minute candles, Delta read and write included.

    make bench-lake                     # 10M rows
    ITFF_BENCH_ROWS=1000000 make bench-lake

Reports the full rebuild (read bronze, compute features/regime/labels, write silver), rows/s, peak RSS,
a one-day incremental update on top of the full history, and compute-only rows/s beside the same feature set
in pandas and TA-Lib (lake_references.py) on the same candles. Results go to benchmarks/results/lake.json.

The rebuild runs in a fresh process, as a Dagster run does, so its peak RSS is its own and not the setup's: the
synthetic history and its bronze write leave ~1.5 GiB in this process's allocator. That process also reports where
the rebuild's time went, per phase (compute and write overlap, two months at a time: their seconds are summed over
both threads).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from itff_platform.features import silver as silver_module
from itff_platform.features.silver import feature_columns, history_bars_needed, month_windows, windows
from itff_platform.lake import delta, layers
from itff_platform.lake.delta import read_rows, replace_partitions, with_month
from itff_platform.lake.layers import LakeTables, build_silver, refresh_silver
from itff_platform.lake.schemas import SILVER_CHECKED
from itff_platform.market.synthetic import random_walk_candles
from itff_platform.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lake_references import agreement, candle_arrays, pandas_features, talib_features

ROOT = Path(__file__).resolve().parents[1]
SYMBOL = "BENCHUSDT"


class PeakRss:
    """Samples this process's resident memory every 10 ms; polars allocates outside Python's tracers."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()

    @staticmethod
    def current() -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self) -> PeakRss:
        self.peak = self.current()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.current())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def synthetic_minutes(n: int, start: datetime, seed: int = 0) -> pl.DataFrame:
    frame = random_walk_candles(
        n, seed=seed, start=start, step_s=60, start_price=30_000, volatility=0.0008, wick=0.0003
    )
    return with_month(frame).with_columns(pl.lit("1m").alias("interval"), pl.lit(SYMBOL).alias("symbol"))


def timed(fn):
    started = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - started


def compare_references(bronze: pl.DataFrame, silver: pl.DataFrame, settings: Settings, silver_s: float) -> dict:
    """Compute only, on the same candles: silver (features, regime and labels, per anchored month) beside the
    same feature set in pandas and in TA-Lib (lake_references), with each one's largest difference from silver."""
    arrays = candle_arrays(bronze)
    rows = bronze.height
    found: dict[str, dict] = {"silver (polars)": {"seconds": round(silver_s, 3), "rows_per_s": round(rows / silver_s)}}
    for name, compute in (("pandas", pandas_features), ("TA-Lib", talib_features)):
        try:
            features, seconds = timed(lambda: compute(arrays, settings))
        except ImportError as missing:  # TA-Lib is a dev extra
            print(f"{name}: skipped ({missing})", flush=True)
            continue
        skip = history_bars_needed(settings)
        found[name] = {
            "seconds": round(seconds, 3),
            "rows_per_s": round(rows / seconds),
            "max_relative_difference_from_silver": float(f"{agreement(features, silver, skip):.1e}"),
        }
    print(f"compute only, {rows:,} rows, {len(feature_columns(settings))} feature columns:", flush=True)
    for name, figures in found.items():
        print(f"  {name:16} {figures['seconds']:7.2f} s  {figures['rows_per_s'] / 1e6:6.2f} M rows/s", flush=True)
    return found


def main() -> None:
    rows = int(os.environ.get("ITFF_BENCH_ROWS", 10_000_000))
    lake_dir = ROOT / "data_lake" / "bench"
    shutil.rmtree(lake_dir, ignore_errors=True)
    settings = Settings(lake_dir=lake_dir, interval="1m", symbols=[SYMBOL])
    tables = LakeTables.under(settings)

    # Setup (not timed): full history in bronze, less the last day, which arrives later as the update.
    start = datetime(2006, 1, 1, tzinfo=UTC)
    history = synthetic_minutes(rows + 1440, start)
    last_day = history.tail(1440)
    bronze = history.head(rows)
    months = [datetime(m.year, m.month, 1, tzinfo=UTC) for m in bronze["month"].unique().sort()]
    replace_partitions(tables.bronze, bronze, "1m", SYMBOL, [m.date() for m in months])
    print(f"bronze: {rows:,} rows of 1-minute candles in {len(months)} monthly partitions", flush=True)

    # Full rebuild: exactly what the silver_features asset runs for a single-run backfill, in a fresh process.
    del history, bronze
    child = subprocess.run(
        [sys.executable, __file__, "--rebuild", str(lake_dir), ",".join(f"{m:%Y-%m-%d}" for m in months)],
        check=True,
        capture_output=True,
        text=True,
    )
    rebuild = json.loads(child.stdout.splitlines()[-1])
    rebuild_s = rebuild["rebuild_s"]
    # The same phases apart, to show where the time goes without the overlap.
    windows_ = month_windows(months, settings)
    read, t_read = timed(lambda: read_rows(tables.bronze, "1m", SYMBOL, windows_[0][0], windows_[-1][3]).rechunk())
    computed, t_compute = timed(lambda: pl.concat([w.rows(settings) for w in windows(read, settings, months)]))
    phases = ", ".join(f"{name} {seconds:.2f}s" for name, seconds in rebuild["phases_s"].items())
    print(f"rebuild: {rebuild_s:.2f}s, peak RSS {rebuild['peak_rss_gib']:.2f} GiB ({phases})", flush=True)
    print(f"alone: read {t_read:.2f}s, compute {t_compute:.2f}s", flush=True)
    references = compare_references(read, computed, settings, t_compute)

    # One new day, five times over fresh days: bronze append, then the silver update for that day.
    updates, appends = [], []
    day_rows = last_day
    for _ in range(5):
        day = day_rows["timestamp"][0]
        day_month = day.replace(day=1, hour=0, minute=0)
        _, t_append = timed(
            lambda: replace_partitions(tables.bronze, day_rows, "1m", SYMBOL, [day_month.date()], since=day)
        )
        _, t_update = timed(lambda: build_silver(settings, SYMBOL, [day_month], since=day))
        appends.append(t_append)
        updates.append(t_update)
        day_rows = day_rows.with_columns(pl.col("timestamp") + timedelta(days=1)).pipe(with_month)
        if day_rows["month"][0] != day_month.date() or day_rows["month"][-1] != day_month.date():
            break
    update_s = statistics.median(updates)

    result = {
        "machine": f"{platform.node()} | {os.cpu_count()} CPUs | {platform.processor() or platform.machine()} | Python {sys.version.split()[0]} | polars {pl.__version__}",
        "rows": rows,
        "partitions": len(months),
        "silver_columns": rebuild["silver_columns"],
        "rebuild_s": round(rebuild_s, 3),
        "rebuild_phases_s": rebuild["phases_s"],
        "read_bronze_alone_s": round(t_read, 3),
        "compute_silver_alone_s": round(t_compute, 3),
        "rebuild_rows_per_s": round(rows / rebuild_s),
        "rebuild_peak_rss_gib": rebuild["peak_rss_gib"],
        "rebuild_peak_rss_over_baseline_gib": rebuild["peak_rss_over_baseline_gib"],
        "one_day_silver_update_s_median": round(update_s, 4),
        "one_day_silver_update_runs": [round(u, 4) for u in updates],
        "one_day_bronze_append_s_median": round(statistics.median(appends), 4),
        "one_day_update_share_of_rebuild": round(update_s / rebuild_s, 4),
        "compute_only_rows_per_s": references,
    }
    out = ROOT / "benchmarks" / "results" / "lake.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    shutil.rmtree(lake_dir, ignore_errors=True)


class PhaseClock:
    """Seconds spent inside some functions, summed over threads: wraps them in their modules while it is open."""

    def __init__(self, targets: dict[str, tuple[object, str]]) -> None:
        self.targets = targets
        self.seconds = dict.fromkeys(targets, 0.0)
        self._lock = threading.Lock()

    def __enter__(self) -> PhaseClock:
        self._saved = {name: getattr(owner, attr) for name, (owner, attr) in self.targets.items()}
        for name, (owner, attr) in self.targets.items():
            setattr(owner, attr, self._timed(name, self._saved[name]))
        return self

    def _timed(self, name: str, fn):
        def timed_call(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                with self._lock:
                    self.seconds[name] += time.perf_counter() - started

        return timed_call

    def __exit__(self, *exc) -> None:
        for name, (owner, attr) in self.targets.items():
            setattr(owner, attr, self._saved[name])


def rebuild_alone(lake_dir: Path, months: list[datetime]) -> None:
    """The child process: the full rebuild as silver_features runs it, its peak RSS, and its time per phase."""
    settings = Settings(lake_dir=lake_dir, interval="1m", symbols=[SYMBOL])
    clock = PhaseClock(
        {
            "read bronze": (layers, "read_rows"),
            "fingerprints": (layers, "silver_fingerprints"),
            "daily range and windows": (layers, "windows"),
            "compute (summed over 2 threads)": (silver_module.Window, "rows"),
            "write Parquet (summed over 2 threads)": (delta, "write_partition_file"),
            "compute and write, overlapped": (layers, "replace_partitions_by_files"),
        }
    )
    with PeakRss() as memory, clock:
        baseline = memory.peak
        refreshed, rebuild_s = timed(lambda: refresh_silver(settings, SYMBOL, months, columns=SILVER_CHECKED))
    figures = {
        "rebuild_s": round(rebuild_s, 3),
        "phases_s": {name: round(seconds, 2) for name, seconds in clock.seconds.items()},
        "silver_columns": len(refreshed.schema),
        "peak_rss_gib": round(memory.peak / 2**30, 2),
        "peak_rss_over_baseline_gib": round((memory.peak - baseline) / 2**30, 2),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--rebuild"]:
        rebuild_alone(
            Path(sys.argv[2]), [datetime.fromisoformat(m).replace(tzinfo=UTC) for m in sys.argv[3].split(",")]
        )
    else:
        main()
