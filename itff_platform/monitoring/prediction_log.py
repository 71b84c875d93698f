"""The prediction log: every served prediction, appended to a Delta table in batches, off the request path.

`append` only puts a record in a buffer; a writer thread commits the buffer when it holds `flush_rows`
records or its oldest record is `flush_s` old. `close` (the service's shutdown hook, and atexit) commits
what is left, so a clean stop loses nothing. A failed write keeps its records for the next attempt; only
past `max_pending` (the disk or lake gone for a long time; ~2 KB a record) are the oldest records dropped,
and counted.

With a write-ahead folder (the service's default), `append_durable` also writes the record to a local
segment (zero-filled beforehand, lines written one after another) and returns once it is on disk (fdatasync):
the service sends its 200 only after that, so a crash (kill -9, power loss) cannot lose an acknowledged
prediction. Concurrent requests share one flush (group commit), started at the end of the event loop's turn, so
that the requests of a /predict batch, answered in one turn, share it; one wake-up of the loop answers them all.
Each Delta flush seals the segment it covered and deletes it once the rows are committed. A segment whose writer
died is replayed into Delta by the next PredictionLog on the same table (the service's next start), skipping
request ids the table already holds, so a replay never writes a row twice."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import errno
import fcntl
import json
import logging
import os
import queue
import re
import threading
import time
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from itff_platform.lake.delta import fsync_path
from itff_platform.settings import Settings

if TYPE_CHECKING:
    from polars._typing import PolarsDataType

log = logging.getLogger(__name__)
# Each write-ahead segment is made long enough, zero-filled, before it takes lines (see WriteAhead._open_segment): a
# segment holds the lines between two Delta flushes (~0.5 KB a row). The first is SEGMENT_BYTES; each next one twice
# what the open segment took by then (segment_bytes), so a busy worker's segments fit its flushes (5,000 rows at the
# default flush_rows) and an idle one's stay small.
SEGMENT_BYTES = 512 * 1024
MAX_SEGMENT_BYTES = 32 * 2**20
SEGMENT_STEP = 64 * 1024
ZERO_CHUNK = 2**20  # each pwrite of the fill frees and retakes the GIL the event loop wants: few, large ones
# Delta's expired-log cleanup lists every file of _delta_log: once per this many commits of a worker, not at each.
CLEANUP_EVERY = 100
# After a failed flush (the lake or the disk gone), the writer thread waits this long before it tries again.
RETRY_S = 1.0


def segment_bytes(used: int) -> int:
    """The zero fill of the next segment when the open one holds `used` bytes of lines."""
    wanted = min(MAX_SEGMENT_BYTES, max(SEGMENT_BYTES, 2 * used))
    return -(-wanted // SEGMENT_STEP) * SEGMENT_STEP


SCHEMA: dict[str, PolarsDataType] = {
    "request_id": pl.String,
    "logged_at": pl.Datetime("us", "UTC"),
    "endpoint": pl.String,
    "symbol": pl.String,
    "target": pl.String,
    "bar_time": pl.Datetime("us", "UTC"),
    "input_sha256": pl.String,
    "model_version": pl.String,
    "family": pl.String,
    "regime": pl.String,
    "signal": pl.String,
    "prob_up": pl.Float64,
    "threshold": pl.Float64,
    "allow": pl.Boolean,
    "uncertainty": pl.Float64,
    "p10": pl.Float64,
    "p50": pl.Float64,
    "p90": pl.Float64,
    "out_of_distribution": pl.Boolean,
    "latency_ms": pl.Float64,
}


def prediction_log_path(settings: Settings) -> Path:
    return settings.monitoring.root / "predictions"


def write_ahead_path(settings: Settings) -> Path:
    """Beside the table, not in it: Delta's vacuum deletes files it does not know inside a table's folder."""
    return settings.monitoring.root / "predictions-wal"


def records_frame(records: list[dict[str, Any]]) -> pl.DataFrame:
    frame = pl.DataFrame([{name: r.get(name) for name in SCHEMA} for r in records], schema=SCHEMA)
    return frame.with_columns(day=pl.col("logged_at").dt.date())


def write_records(path: Path, records: list[dict[str, Any]]) -> None:
    from deltalake import PostCommitHookProperties, write_deltalake

    # Checkpoints stay (they bound what loading the table reads). Cleaning expired log files lists and stats every
    # file of _delta_log: done at every commit of every worker, it cost more than the commit; PredictionLog does it
    # every CLEANUP_EVERY commits instead (clean_expired_log_files).
    hooks = PostCommitHookProperties(create_checkpoint=True, cleanup_expired_logs=False)
    # Appends from several service workers do not conflict: Delta retries the commit on a new version.
    write_deltalake(
        str(path),
        records_frame(records).to_arrow(),
        mode="append",
        partition_by=["day"],
        post_commithook_properties=hooks,
    )


def read_prediction_log(settings: Settings) -> pl.DataFrame:
    from deltalake import DeltaTable

    path = prediction_log_path(settings)
    if not DeltaTable.is_deltatable(str(path)):
        return records_frame([])
    return pl.read_delta(str(path)).sort("logged_at")


def clean_expired_log_files(path: Path) -> None:
    """Delete the table's log files past their retention (delta.logRetentionDuration, 30 days) and older than its
    newest checkpoint: safe beside other writers' appends."""
    from deltalake import DeltaTable

    DeltaTable(str(path)).cleanup_metadata()


def compact_prediction_log(settings: Settings) -> dict[str, int]:
    """Merge the small files the workers' frequent appends leave (one per flush per worker) into few large ones.
    Compaction rewrites without changing data, so it does not conflict with the service appending meanwhile."""
    from deltalake import DeltaTable

    path = prediction_log_path(settings)
    if not DeltaTable.is_deltatable(str(path)):
        return {"files_removed": 0, "files_added": 0}
    metrics = DeltaTable(str(path)).optimize.compact()
    return {
        "files_removed": int(metrics.get("numFilesRemoved", 0)),
        "files_added": int(metrics.get("numFilesAdded", 0)),
    }


class PredictionLog:
    def __init__(
        self,
        path: Path,
        flush_rows: int = 5000,
        flush_s: float = 10.0,
        max_pending: int = 50_000,
        write_ahead: Path | None = None,
    ) -> None:
        self.path, self.flush_rows, self.flush_s, self.max_pending = path, flush_rows, flush_s, max_pending
        self.written = self.dropped = self.failed_writes = self.replayed = self.commits = 0
        self._pending: deque[dict[str, Any]] = deque()
        self._oldest: float | None = None
        self._wake = threading.Condition()
        self._write_lock = threading.Lock()
        self._closed = False
        self.wal = None
        if write_ahead is not None:
            self.replayed = replay_segments(path, write_ahead)
            self.wal = WriteAhead(write_ahead)
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    @classmethod
    def for_settings(cls, settings: Settings, write_ahead: bool = False) -> PredictionLog:
        return cls(
            prediction_log_path(settings),
            settings.serving.prediction_log_flush_rows,
            settings.serving.prediction_log_flush_s,
            write_ahead=write_ahead_path(settings) if write_ahead else None,
        )

    def append(self, record: dict[str, Any]) -> None:
        """Never blocks on I/O and never raises into the request."""
        record.setdefault("logged_at", datetime.now(UTC))
        with self._wake:
            self._buffer(record)
            closed = self._closed
        if closed:  # a request that finished during shutdown: no writer thread is left, write it now
            self.flush()

    async def append_durable(self, record: dict[str, Any]) -> None:
        """append, and return once the record is fsynced to the write-ahead segment (at once without one).
        Raises OSError when the segment cannot be written: the caller must not acknowledge the prediction."""
        if self.wal is None:
            return self.append(record)
        record.setdefault("logged_at", datetime.now(UTC))
        line = json.dumps(record, default=_json_value).encode() + b"\n"
        with self._wake:
            seq = self.wal.write(line)  # under the buffer's lock: the segment and the buffer hold the same rows
            self._buffer(record)
            closed = self._closed
        if closed:
            self.flush()
            return
        await self.wal.synced(seq)

    def _buffer(self, record: dict[str, Any]) -> None:
        """Call holding self._wake."""
        if len(self._pending) >= self.max_pending:
            self._pending.popleft()
            self.dropped += 1
        self._pending.append(record)
        if self._oldest is None:
            self._oldest = time.monotonic()
        if len(self._pending) >= self.flush_rows:
            self._wake.notify()

    def pending(self) -> int:
        return len(self._pending)

    def _due(self) -> bool:
        """Call holding self._wake: flush() may empty the buffer (and clear _oldest) concurrently."""
        oldest = self._oldest
        return bool(self._pending) and (
            len(self._pending) >= self.flush_rows or (oldest is not None and time.monotonic() - oldest >= self.flush_s)
        )

    def _run(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(lambda: self._closed or self._due(), timeout=self.flush_s)
                if self._closed:
                    return
                due = self._due()
            if due:
                try:
                    written = self.flush()
                except Exception:  # the writer thread must outlive any single bad batch
                    log.exception("prediction log: flush failed")
                    written = 0
                if not written:
                    # Still due (the rows are kept): without a pause the thread would retry, and log, in a busy loop.
                    with self._wake:
                        self._wake.wait_for(lambda: self._closed, timeout=RETRY_S)

    def flush(self) -> int:
        """Commit everything waiting now; returns the rows written (0 if the write failed, records kept)."""
        with self._write_lock:
            with self._wake:
                if not self._pending:  # nothing to commit: no fresh segment (its zero fill) to make for it
                    return 0
            if self.wal is not None:
                # Made durable before any lock is taken: appends (on the service's event loop) need the buffer's
                # lock, and must not wait for a disk flush.
                fresh = self.wal.new_segment()
                with self.wal.sync_lock:  # no fsync in flight while the segment is swapped
                    with self._wake:
                        batch, self._pending, self._oldest = list(self._pending), deque(), None
                        sealed = self.wal.seal(fresh)  # exactly the rows of `batch` (and earlier failed batches)
                    self.wal.sync_sealed()
            else:
                with self._wake:
                    batch, self._pending, self._oldest = list(self._pending), deque(), None
            if not batch:
                return 0
            try:
                write_records(self.path, batch)
            except Exception:
                log.exception(
                    "prediction log: writing %d rows to %s failed; keeping them for the next flush",
                    len(batch),
                    self.path,
                )
                self.failed_writes += 1
                with self._wake:
                    self._pending.extendleft(reversed(batch))
                    self._oldest = time.monotonic()
                    while len(self._pending) > self.max_pending:
                        self._pending.popleft()
                        self.dropped += 1
                return 0
            if self.wal is not None:
                self.wal.release(sealed)  # committed to Delta: their segments are no longer needed
            self.written += len(batch)
            self.commits += 1
            if self.commits % CLEANUP_EVERY == 0:
                try:
                    clean_expired_log_files(self.path)
                except Exception:  # housekeeping: the rows are committed whatever happens here
                    log.exception("prediction log: cleaning expired log files of %s failed", self.path)
            return len(batch)

    def close(self) -> None:
        if self._closed:
            return
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=5)
        self.flush()
        if self.wal is not None:
            self.wal.close(keep=bool(self._pending))
        atexit.unregister(self.close)


def _json_value(value: object) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class WriteAhead:
    """Segment files in one folder, lines written one after another into a zero-filled file, one open segment per
    writer process, each held under an exclusive flock for as long as its writer lives: a segment that can be locked
    belongs to a dead writer."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.sync_lock = threading.Lock()  # one fsync (or segment swap) at a time
        self._lock = threading.Lock()  # the open segment, the sequence numbers and the waiters
        self._seq = self._synced = self._sealed_seq = 0
        # Lines an fsync failed to make durable, as (after, upto] ranges: never answered as durable, not even after
        # a later fsync succeeds (after a failed fsync the kernel may have dropped those pages and report clean).
        self._failed: list[tuple[int, int, OSError]] = []
        # The last failed flush's error (each failure raises a fresh one): write() sees by identity whether a flush
        # failed while it wrote.
        self._last_failure: OSError | None = None
        self._waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        # The fsync thread waits on a C-level queue: a put wakes it with one futex, where a threading.Condition
        # made a lock per wait and ran its predicate in Python, under the GIL the event loop wants back.
        self._kicks: queue.SimpleQueue[None] = queue.SimpleQueue()
        self._asleep = False  # the fsync thread waits for a kick: only then is one put, never one per turn
        self._kick_scheduled = False  # a kick of the fsync thread waits for the end of the event loop's turn
        self._sealed: list[tuple[Path, int]] = []  # (segment, fd) flushed to disk, waiting for their Delta commit
        self._closed = False
        self._path, self._fd = self._open_segment()
        self._end = self._sealed_end = 0  # where the open (the last sealed) segment's next line goes
        self._torn = False  # a write failed part-way: the next line starts on a line of its own
        self._thread = threading.Thread(target=self._sync_loop, name="prediction-log-fsync", daemon=True)
        self._thread.start()

    def _open_segment(self, size: int = SEGMENT_BYTES) -> tuple[Path, int]:
        # Created under a temporary name and locked before it is renamed into view: a replayer never sees an
        # unlocked live segment.
        name = f"{os.getpid()}-{time.time_ns()}"
        temporary, final = self.folder / f"{name}.new", self.folder / f"{name}.jsonl"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            self._prepare_segment(fd, temporary, final, size)
        except BaseException:  # a full disk: no fd and no .new file left behind by each retry of a flush
            os.close(fd)
            temporary.unlink(missing_ok=True)
            raise
        return final, fd

    def _prepare_segment(self, fd: int, temporary: Path, final: Path, size: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        # Zero-filled and fsynced now, off the request path: lines then overwrite blocks already on disk, and
        # the fdatasync after them writes those data blocks alone. Appended, every line changed the file's size,
        # which made each fdatasync (or fsync) a journal commit too: twice the CPU and latency (docs/benchmarks.md).
        # Replay reads the lines between zero bytes (_read_segment). A segment that outgrows `size` still works: its
        # writes extend it (and the next segment is made larger, segment_bytes).
        zeros, offset = bytes(ZERO_CHUNK), 0
        while offset < size:
            offset += os.pwrite(fd, zeros[: size - offset], offset)
        os.fsync(fd)
        os.rename(temporary, final)
        fsync_path(self.folder)

    def write(self, line: bytes) -> int:
        """Write one record after the last (to the OS, not yet to the disk); its sequence number for `synced`. Call
        holding the log's buffer lock, as `seal` is: the segment is not swapped meanwhile."""
        # Not under _lock: the write frees the GIL, the fsync thread takes it and would block on _lock, then the
        # event loop on the GIL, a convoy of thread switches per request (docs/benchmarks.md). Counted once written.
        if self._torn:
            # Ends the torn line on a byte no JSON value ends with: cut before its newline alone, it would otherwise
            # read back whole, a row for a request that was refused.
            line = b"#\n" + line
        failure_before, written = self._last_failure, 0
        try:
            while written < len(line):
                done = os.pwrite(self._fd, line[written:], self._end)
                if done == 0:
                    raise OSError(errno.EIO, "write-ahead segment: nothing written")
                written += done
                self._end += done
        except OSError:
            # The part written stays a torn line, never a prefix of the next one (nor does an earlier torn line
            # become one when this write wrote nothing).
            self._torn = self._torn or written > 0
            raise
        self._torn = False
        with self._lock:
            self._seq += 1
            if self._last_failure is not failure_before and self._last_failure is not None:
                # A flush failed while this line was being written, before it was counted: the line may sit in the
                # failed pages too, and that flush's refusal (up to the count it read) did not include it.
                self._failed.append((self._seq - 1, self._seq, self._last_failure))
            return self._seq

    async def synced(self, seq: int) -> None:
        """Return once the record `seq` is on disk."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._lock:
            for after, upto, error in self._failed:
                if after < seq <= upto:
                    raise error
            if self._synced >= seq:
                return
            self._waiters.append((seq, loop, future))
            kick, self._kick_scheduled = not self._kick_scheduled, True
        if kick:
            # At the end of this turn of the event loop, not now: the requests of one /predict batch are answered
            # in the same turn, one after another, and each writes its line; kicked at the first, the fsync would
            # cover that line alone and the others would wait for another. Kicked after the turn, one covers all.
            loop.call_soon(self._kick_now)
        await future

    def _kick_now(self) -> None:
        with self._lock:
            self._kick_scheduled = False
            wake, self._asleep = self._asleep, False
        if wake:  # a busy fsync thread looks for waiters again before it sleeps
            self._kicks.put(None)

    def _sync_loop(self) -> None:
        while True:
            with self._lock:
                idle = not self._waiters
                if idle and self._closed:
                    return
                self._asleep = idle
            if idle:
                self._kicks.get()
                continue
            with self.sync_lock:
                # Without _lock (see write): under sync_lock the segment is not swapped, and _seq counts only
                # lines already written, so this flush covers every line up to it (and no later one).
                target, fd = self._seq, self._fd
                try:
                    # Every request that wrote before this point rides on this one flush. fdatasync: the size and
                    # blocks of the zero-filled segment are on disk already, only the lines' data is not.
                    os.fdatasync(fd)
                except OSError as error:
                    # Lines written while the flush ran may sit in the pages whose writeback failed, which the kernel
                    # then marks clean: a later flush would skip them and report success. Refuse them too.
                    # A line written but not yet counted is refused by write(), which sees the failure counted.
                    with self._lock:
                        written = self._seq
                        self._last_failure = error
                    self._settle(written, error)
                else:
                    self._settle(target)

    def _settle(self, target: int, error: OSError | None = None) -> None:
        """Answer the waiters for lines up to `target`: durable, or failed with `error`, which also marks the lines
        not fsynced before as failed for any request that asks later."""
        with self._lock:
            if error is None:
                self._synced = max(self._synced, target)
            elif target > self._synced:
                self._failed.append((self._synced, target, error))
            ready: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
            for seq, loop, future in self._waiters:
                if seq <= target:
                    ready.setdefault(loop, []).append(future)
            self._waiters = [w for w in self._waiters if w[0] > target]
        # One wake-up per event loop for all its waiters: each call_soon_threadsafe writes the loop's self-pipe
        # and takes a turn of it, and a group commit answers many requests of the same loop at once.
        for loop, futures in ready.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits there any more
                loop.call_soon_threadsafe(_settle_futures, futures, error)

    def new_segment(self) -> tuple[Path, int]:
        """A segment for `seal` to switch to, made (and its folder fsynced) without holding any lock, sized by what
        the open segment took (a plain read of its end: lines written meanwhile change the size little). On a nearly
        full disk a fill too large for it falls back to the first size: the flush must go on committing rows."""
        wanted = segment_bytes(self._end)
        try:
            return self._open_segment(wanted)
        except OSError as error:
            if wanted <= SEGMENT_BYTES or error.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            log.warning("prediction log: no room for a %d-byte segment, making a %d-byte one", wanted, SEGMENT_BYTES)
            return self._open_segment(SEGMENT_BYTES)

    def seal(self, fresh: tuple[Path, int]) -> list[tuple[Path, int]]:
        """Call holding sync_lock and the log's buffer lock: switch to `fresh` (from new_segment); the previous
        segment, and any sealed before whose rows have not been committed yet, are returned for `release`
        after the commit."""
        with self._lock:
            self._sealed.append((self._path, self._fd))
            self._path, self._fd = fresh
            self._sealed_end, self._end, self._torn = self._end, 0, False
            self._sealed_seq = self._seq
            return list(self._sealed)

    def sync_sealed(self) -> None:
        """Call holding sync_lock, after seal: the sealed segment is fsynced, so its waiters are answered."""
        try:
            # Cut to its lines: while Delta is down, a sealed segment waits for many flushes, and each would
            # otherwise keep its whole zero fill on disk.
            os.ftruncate(self._sealed[-1][1], self._sealed_end)
            os.fdatasync(self._sealed[-1][1])
        except OSError as error:  # the waiters hear it (no 200); the rows are still in memory for Delta
            log.error("prediction log: flushing sealed segment %s failed: %s", self._sealed[-1][0], error)
            self._settle(self._sealed_seq, error)
            return
        self._settle(self._sealed_seq)

    def release(self, segments: list[tuple[Path, int]]) -> None:
        for path, fd in segments:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            os.close(fd)
        with self._lock:
            self._sealed = [s for s in self._sealed if s not in segments]

    def close(self, keep: bool = False) -> None:
        """Stop; without `keep`, every segment is deleted (the log committed all its rows). With `keep` (rows
        still uncommitted) the segments stay, and the next start replays them."""
        with self._lock:
            self._closed = True
            wake, self._asleep = self._asleep, False
        if wake:
            self._kicks.put(None)
        self._thread.join(timeout=5)
        segments = [*self._sealed, (self._path, self._fd)]
        if keep:
            for _, fd in segments:
                os.close(fd)  # closing drops the lock: the next replay takes them
        else:
            self.release(segments)


def _settle_futures(futures: list[asyncio.Future[None]], error: OSError | None) -> None:
    for future in futures:
        if future.done():
            continue  # cancelled: its request is gone
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)


def replay_segments(table: Path, folder: Path) -> int:
    """Commit the rows of every segment whose writer is dead (its lock can be taken) into the table, skipping
    request ids already there, then delete the segment. Returns the rows written. Safe to run from many
    processes at once: a segment is replayed by whoever locks it first."""
    if not folder.is_dir():
        return 0
    replayed = 0
    for path in sorted(folder.glob("*.jsonl")):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # its writer is alive
        try:
            if not path.exists() or os.stat(path).st_ino != os.fstat(fd).st_ino:
                continue  # replayed and deleted by another process between our open and our lock
            records = _read_segment(fd)
            fresh = _not_yet_logged(table, records)
            if fresh:
                write_records(table, fresh)
            replayed += len(fresh)
            path.unlink()
            log.warning(
                "prediction log: replayed %d of %d rows from %s, left by a writer that stopped without committing them",
                len(fresh),
                len(records),
                path.name,
            )
        except Exception:
            log.exception("prediction log: replaying %s failed; it is kept for the next start", path)
        finally:
            os.close(fd)
    for path in folder.glob("*.new"):  # a writer that died between creating and naming its segment wrote nothing
        if time.time() - path.stat().st_mtime > 60:
            path.unlink(missing_ok=True)
    return replayed


def _read_segment(fd: int) -> list[dict[str, Any]]:
    with os.fdopen(os.dup(fd), "rb") as segment:
        # The lines of every stretch between zero bytes, not only of the first: lines refused after a failed flush
        # may have kept the zero fill on disk (the kernel drops pages whose writeback failed), and lines acknowledged
        # by a later flush lie past them. JSON text holds no zero byte (json.dumps escapes a NUL).
        # Only lines that end in a newline: a line cut short (a torn write, the last before a crash or a hole) is
        # never one that was acknowledged.
        # Split on runs of zeros, not on each zero byte: a segment can be 32 MiB of mostly zero fill.
        stretches = re.split(rb"\0+", segment.read())
        lines = [line for stretch in stretches for line in stretch.split(b"\n")[:-1] if line]
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a torn line: never fsynced, so never acknowledged
        if not isinstance(record, dict):
            continue  # a fragment of a torn line that happens to be JSON
        for name in ("logged_at", "bar_time"):
            if record.get(name):
                record[name] = datetime.fromisoformat(record[name])
        records.append(record)
    return records


def _not_yet_logged(table: Path, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from deltalake import DeltaTable

    if not records or not DeltaTable.is_deltatable(str(table)):
        return records
    days = sorted({r["logged_at"].date() for r in records})
    ids = [r["request_id"] for r in records]
    present = set(
        pl.scan_delta(str(table))
        .filter(pl.col("day").is_in(days), pl.col("request_id").is_in(ids))
        .select("request_id")
        .collect()["request_id"]
        .to_list()
    )
    return [r for r in records if r["request_id"] not in present]
