"""The prediction log: every served prediction, appended to a Delta table in batches, off the request path.

`append` only puts a record in a buffer; a writer thread commits the buffer when it holds `flush_rows`
records or its oldest record is `flush_s` old. `close` (the service's shutdown hook, and atexit) commits
what is left, so a clean stop loses nothing. A failed write keeps its records for the next attempt; only
past `max_pending` (the disk or lake gone for a long time; ~2 KB a record) are the oldest records dropped,
and counted."""

from __future__ import annotations

import atexit
import hashlib
import logging
import threading
import time
from collections import deque
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl

from itff_platform.settings import Settings

log = logging.getLogger(__name__)

SCHEMA = {
    "request_id": pl.String, "logged_at": pl.Datetime("us", "UTC"), "endpoint": pl.String,
    "symbol": pl.String, "target": pl.String, "bar_time": pl.Datetime("us", "UTC"), "input_sha256": pl.String,
    "model_version": pl.String, "family": pl.String, "regime": pl.String, "signal": pl.String,
    "prob_up": pl.Float64, "threshold": pl.Float64, "allow": pl.Boolean, "uncertainty": pl.Float64,
    "p10": pl.Float64, "p50": pl.Float64, "p90": pl.Float64, "out_of_distribution": pl.Boolean,
    "latency_ms": pl.Float64,
}


def prediction_log_path(settings: Settings) -> Path:
    return settings.monitoring_dir / "predictions"


def input_hash(symbol: str, target: str, row: np.ndarray) -> str:
    """Same inputs, same hash: the feature row as float64 bytes, with what it was asked about."""
    return hashlib.sha256(f"{symbol}|{target}|".encode() + np.ascontiguousarray(row, dtype=np.float64).tobytes()).hexdigest()


def records_frame(records: list[dict]) -> pl.DataFrame:
    frame = pl.DataFrame([{name: r.get(name) for name in SCHEMA} for r in records], schema=SCHEMA)
    return frame.with_columns(day=pl.col("logged_at").dt.date())


def write_records(path: Path, records: list[dict]) -> None:
    from deltalake import write_deltalake

    # Appends from several service workers do not conflict: Delta retries the commit on a new version.
    write_deltalake(str(path), records_frame(records).to_arrow(), mode="append", partition_by=["day"])


def read_prediction_log(settings: Settings) -> pl.DataFrame:
    from deltalake import DeltaTable

    path = prediction_log_path(settings)
    if not DeltaTable.is_deltatable(str(path)):
        return records_frame([])
    return pl.read_delta(str(path)).sort("logged_at")


def compact_prediction_log(settings: Settings) -> dict[str, int]:
    """Merge the small files the workers' frequent appends leave (one per flush per worker) into few large ones.
    Compaction rewrites without changing data, so it does not conflict with the service appending meanwhile."""
    from deltalake import DeltaTable

    path = prediction_log_path(settings)
    if not DeltaTable.is_deltatable(str(path)):
        return {"files_removed": 0, "files_added": 0}
    metrics = DeltaTable(str(path)).optimize.compact()
    return {"files_removed": int(metrics.get("numFilesRemoved", 0)), "files_added": int(metrics.get("numFilesAdded", 0))}


class PredictionLog:
    def __init__(self, path: Path, flush_rows: int = 500, flush_s: float = 2.0, max_pending: int = 50_000) -> None:
        self.path, self.flush_rows, self.flush_s, self.max_pending = path, flush_rows, flush_s, max_pending
        self.written = self.dropped = self.failed_writes = 0
        self._pending: deque[dict] = deque()
        self._oldest: float | None = None
        self._wake = threading.Condition()
        self._write_lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    @classmethod
    def for_settings(cls, settings: Settings) -> "PredictionLog":
        return cls(prediction_log_path(settings), settings.prediction_log_flush_rows, settings.prediction_log_flush_s)

    def append(self, record: dict) -> None:
        """Never blocks on I/O and never raises into the request."""
        record.setdefault("logged_at", datetime.now(timezone.utc))
        with self._wake:
            if len(self._pending) >= self.max_pending:
                self._pending.popleft()
                self.dropped += 1
            self._pending.append(record)
            if self._oldest is None:
                self._oldest = time.monotonic()
            if len(self._pending) >= self.flush_rows:
                self._wake.notify()
            closed = self._closed
        if closed:  # a request that finished during shutdown: no writer thread is left, write it now
            self.flush()

    def pending(self) -> int:
        return len(self._pending)

    def _due(self) -> bool:
        """Call holding self._wake: flush() may empty the buffer (and clear _oldest) concurrently."""
        oldest = self._oldest
        return bool(self._pending) and (len(self._pending) >= self.flush_rows
                                        or (oldest is not None and time.monotonic() - oldest >= self.flush_s))

    def _run(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._closed or self._due(), timeout=self.flush_s)
                if self._closed:
                    return
                due = self._due()
            if due:
                try:
                    self.flush()
                except Exception:  # the writer thread must outlive any single bad batch
                    log.exception("prediction log: flush failed")

    def flush(self) -> int:
        """Commit everything waiting now; returns the rows written (0 if the write failed, records kept)."""
        with self._write_lock:
            with self._wake:
                batch, self._pending, self._oldest = list(self._pending), deque(), None
            if not batch:
                return 0
            try:
                write_records(self.path, batch)
            except Exception:
                log.exception("prediction log: writing %d rows to %s failed; keeping them for the next flush", len(batch), self.path)
                self.failed_writes += 1
                with self._wake:
                    self._pending.extendleft(reversed(batch))
                    self._oldest = time.monotonic()
                    while len(self._pending) > self.max_pending:
                        self._pending.popleft()
                        self.dropped += 1
                return 0
            self.written += len(batch)
            return len(batch)

    def close(self) -> None:
        if self._closed:
            return
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=5)
        self.flush()
        atexit.unregister(self.close)
