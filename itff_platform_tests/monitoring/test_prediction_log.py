"""The prediction log writes real Delta tables, in batches, off the caller's thread, and loses nothing on close."""

import os
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from itff_platform.contracts.answers import input_hash
from itff_platform.monitoring.prediction_log import PredictionLog, records_frame


def record(i: int) -> dict:
    at = datetime(2024, 9, 1, tzinfo=UTC) + timedelta(hours=i)
    return {
        "request_id": f"r{i}",
        "logged_at": at,
        "endpoint": "/predict",
        "symbol": "BTCUSDT",
        "target": "direction",
        "bar_time": at,
        "model_version": "3",
        "family": "logistic",
        "regime": "neutral",
        "signal": "long",
        "prob_up": 0.6,
        "threshold": 0.55,
        "allow": True,
        "latency_ms": 1.5,
        "out_of_distribution": False,
        "input_sha256": input_hash("BTCUSDT", "direction", np.arange(3.0)),
    }


def segment_records(path) -> list[dict]:
    """The records a replay would read from a write-ahead segment."""
    from itff_platform.monitoring.prediction_log import _read_segment

    fd = os.open(path, os.O_RDONLY)
    try:
        return _read_segment(fd)
    finally:
        os.close(fd)


def delta_rows(path) -> pl.DataFrame:
    return pl.read_delta(str(path)).sort("request_id")


def test_rows_are_written_in_batches_and_close_flushes_the_rest(tmp_path):
    log = PredictionLog(tmp_path / "predictions", flush_rows=10, flush_s=60)
    for i in range(25):
        log.append(record(i))
    deadline = time.monotonic() + 10
    while log.written < 10 and time.monotonic() < deadline:  # a full batch goes without waiting for flush_s
        time.sleep(0.05)
    # Not written + pending() == 25: a batch the writer thread holds while it commits is counted in neither.
    assert log.written >= 10
    log.close()
    assert log.written == 25 and log.pending() == 0
    rows = delta_rows(tmp_path / "predictions")
    assert rows.height == 25 and rows["request_id"].n_unique() == 25
    assert rows["day"].n_unique() == 2  # partitioned by day: 25 hours span two days


def test_a_small_trickle_is_written_after_flush_s(tmp_path):
    log = PredictionLog(tmp_path / "predictions", flush_rows=1000, flush_s=0.2)
    log.append(record(0))
    deadline = time.monotonic() + 10
    while log.written < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log.written == 1
    log.close()


def test_a_failed_write_keeps_the_records_for_the_next_flush(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the table should go")
    log = PredictionLog(blocker / "predictions", flush_rows=1000, flush_s=60)
    log.append(record(0))
    assert log.flush() == 0 and log.failed_writes == 1 and log.pending() == 1
    log.path = tmp_path / "predictions"  # the disk comes back
    log.close()
    assert delta_rows(tmp_path / "predictions").height == 1 and log.dropped == 0


def test_the_same_inputs_hash_the_same_and_the_schema_is_fixed():
    a = input_hash("BTCUSDT", "direction", np.array([1.0, 2.0]))
    assert a == input_hash("BTCUSDT", "direction", np.array([1.0, 2.0]))
    assert a != input_hash("BTCUSDT", "level_up", np.array([1.0, 2.0]))
    frame = records_frame([record(0)])
    assert frame.schema["bar_time"] == pl.Datetime("us", "UTC") and frame["p50"].is_null().all()


def test_compaction_merges_the_small_files_and_keeps_every_row(tmp_path):
    from deltalake import DeltaTable

    from itff_platform.monitoring.prediction_log import compact_prediction_log, prediction_log_path
    from itff_platform.settings import Settings

    settings = Settings(home=tmp_path)
    log = PredictionLog.for_settings(settings)
    for i in range(6):  # six flushes of one row each: six files in one day's partition
        log.append(record(i))
        log.flush()
    log.close()
    path = prediction_log_path(settings)
    assert len(DeltaTable(str(path)).file_uris()) == 6
    assert compact_prediction_log(settings) == {"files_removed": 6, "files_added": 1}
    assert len(DeltaTable(str(path)).file_uris()) == 1 and delta_rows(path).height == 6


def test_append_durable_fsyncs_a_segment_before_it_returns_and_a_commit_deletes_it(tmp_path):
    import asyncio

    log = PredictionLog(tmp_path / "predictions", flush_rows=1000, flush_s=60, write_ahead=tmp_path / "wal")

    async def many():
        await asyncio.gather(*(log.append_durable(record(i)) for i in range(20)))  # one fsync serves many

    asyncio.run(many())
    segments = list((tmp_path / "wal").glob("*.jsonl"))
    lines = [r for path in segments for r in segment_records(path)]
    assert sorted(r["request_id"] for r in lines) == sorted(f"r{i}" for i in range(20))
    assert log.flush() == 20 and delta_rows(tmp_path / "predictions").height == 20
    # committed: only the new one is left, zero-filled, holding no line
    assert [segment_records(p) for p in (tmp_path / "wal").glob("*.jsonl")] == [[]]
    log.close()
    assert list((tmp_path / "wal").glob("*")) == []


def test_a_dead_writers_segment_is_replayed_once_at_the_next_start(tmp_path):
    import asyncio
    import json
    import shutil

    from itff_platform.monitoring.prediction_log import _json_value

    live = PredictionLog(tmp_path / "predictions", flush_rows=1000, flush_s=60, write_ahead=tmp_path / "wal")
    for i in range(5):
        asyncio.run(live.append_durable(record(i)))
    (segment,) = (tmp_path / "wal").glob("*.jsonl")
    # What a killed writer leaves: a segment nobody holds a lock on. This one's rows also reach the table
    # (the live writer commits them), so its replay must skip them rather than write them twice.
    shutil.copy(segment, tmp_path / "wal" / "999999-1.jsonl")
    live.close()
    with open(tmp_path / "wal" / "999999-2.jsonl", "w") as dead:
        dead.write(json.dumps(record(5), default=_json_value) + "\n")
        dead.write('{"request_id": "half')  # cut short by the crash: never fsynced, so never acknowledged
    restarted = PredictionLog(tmp_path / "predictions", flush_rows=1000, flush_s=60, write_ahead=tmp_path / "wal")
    assert restarted.replayed == 1  # r5; r0..r4 were in the table already
    assert not list((tmp_path / "wal").glob("999999-*"))
    restarted.close()
    assert delta_rows(tmp_path / "predictions")["request_id"].to_list() == [f"r{i}" for i in range(6)]  # each once


def test_a_flush_does_not_hold_the_buffer_while_the_next_segment_is_made_durable(tmp_path, monkeypatch):
    """Appends run on the service's event loop: a flush must not make them wait for a disk flush (the new
    segment's folder fsync, milliseconds to tens on a busy disk, stalled every request in the worker)."""
    import asyncio
    import threading

    from itff_platform.monitoring import prediction_log

    log = PredictionLog(tmp_path / "predictions", flush_rows=1000, flush_s=60, write_ahead=tmp_path / "wal")
    log.append(record(0))
    real_fsync = prediction_log.fsync_path

    def slow_fsync(path):
        time.sleep(1.0)
        real_fsync(path)

    monkeypatch.setattr(prediction_log, "fsync_path", slow_fsync)
    flushing = threading.Thread(target=log.flush)
    flushing.start()
    time.sleep(0.1)  # the flush is making its next segment durable
    started = time.perf_counter()
    asyncio.run(log.append_durable(record(1)))
    waited = time.perf_counter() - started
    flushing.join()
    monkeypatch.setattr(prediction_log, "fsync_path", real_fsync)
    log.close()
    assert waited < 0.5, f"an append waited {waited:.2f} s for the flush's fsync"


def test_the_rows_answered_in_one_turn_of_the_event_loop_share_one_fsync(tmp_path, monkeypatch):
    """/predict's batcher answers a batch's requests in one turn of the event loop, each writing its line between
    pauses that free the GIL. The fsync thread is kicked once the turn ends, so one fsync covers every line (kicked
    at the first line, it fsynced that one alone and the others waited for more: 0.36 fsyncs per request at 8 in
    flight, 0.13 now; docs/benchmarks.md). Each append still returns only once its line is fsynced."""
    import asyncio
    import os

    from itff_platform.monitoring import prediction_log

    log = PredictionLog(tmp_path / "predictions", flush_rows=1000, flush_s=60, write_ahead=tmp_path / "wal")
    assert log.wal is not None
    covered: list[int] = []  # the last line each fsync covered
    real_flush = os.fdatasync

    def counted(fd):
        covered.append(log.wal._seq)
        real_flush(fd)

    monkeypatch.setattr(prediction_log.os, "fdatasync", counted)
    returned: list[tuple[int, int]] = []  # (line, lines fsynced when its append returned)

    async def answer(i: int, turn: asyncio.Event) -> None:
        await turn.wait()  # the batch's requests resume in one turn, as after the batcher's model call
        time.sleep(0.002)  # the answer's work, during which another thread may take the GIL
        await log.append_durable(record(i))
        returned.append((i, log.wal._synced))

    async def batch() -> None:
        turn = asyncio.Event()
        answers = [asyncio.ensure_future(answer(i, turn)) for i in range(8)]
        await asyncio.sleep(0)
        turn.set()
        await asyncio.gather(*answers)

    asyncio.run(batch())
    monkeypatch.setattr(prediction_log.os, "fdatasync", real_flush)
    log.close()
    assert covered == [8]
    assert sorted(returned) == [(i, 8) for i in range(8)]
    assert delta_rows(tmp_path / "predictions").height == 8


def test_a_line_a_failed_fsync_covered_is_never_answered_as_durable(tmp_path, monkeypatch):
    """Two requests write their lines; the second's fsync fails (EIO) and covers both. The first, asking only
    afterwards, must hear the failure too (it got a 200 before: the failed fsync still counted as synced), and a
    later successful fsync does not make its line durable (the kernel may have dropped it). A line written after
    the failure is durable as usual."""
    import asyncio
    import errno
    import os

    from itff_platform.monitoring import prediction_log

    wal = prediction_log.WriteAhead(tmp_path / "wal")
    real_flush = os.fdatasync

    def failing(fd):
        raise OSError(errno.EIO, "Input/output error")

    first, second = wal.write(b"1\n"), wal.write(b"2\n")
    monkeypatch.setattr(prediction_log.os, "fdatasync", failing)
    with pytest.raises(OSError):
        asyncio.run(wal.synced(second))
    monkeypatch.setattr(prediction_log.os, "fdatasync", real_flush)
    third = wal.write(b"3\n")
    asyncio.run(wal.synced(third))  # a good fsync after the failure
    with pytest.raises(OSError):
        asyncio.run(wal.synced(first))
    wal.close()


def test_a_segment_is_zero_filled_beforehand_so_a_line_does_not_change_its_size(tmp_path, monkeypatch):
    """An appended line changed the segment's size, so the flush before each 200 also had to commit the inode
    (a journal commit: about twice the CPU and the latency of flushing the line's data alone; docs/benchmarks.md).
    The segment is now made full length, zeros on disk, before any line, and lines are flushed with fdatasync."""
    import asyncio

    from itff_platform.monitoring import prediction_log

    log = PredictionLog(tmp_path / "predictions", flush_rows=1000, flush_s=60, write_ahead=tmp_path / "wal")
    assert log.wal is not None
    size = os.fstat(log.wal._fd).st_size
    flushed: list[str] = []
    for name in ("fsync", "fdatasync"):
        real = getattr(os, name)
        monkeypatch.setattr(prediction_log.os, name, lambda fd, name=name, real=real: (flushed.append(name), real(fd)))

    async def answers() -> None:
        await asyncio.gather(*(log.append_durable(record(i)) for i in range(5)))

    asyncio.run(answers())
    monkeypatch.undo()
    assert size == prediction_log.SEGMENT_BYTES and os.fstat(log.wal._fd).st_size == size
    assert flushed and set(flushed) == {"fdatasync"}
    assert [r["request_id"] for r in segment_records(log.wal._path)] == [f"r{i}" for i in range(5)]
    log.close()


def test_a_zero_filled_segment_left_by_a_crash_replays_its_whole_lines_and_skips_the_zeros(tmp_path):
    """What a killed writer leaves in a zero-filled segment: acknowledged lines, maybe a torn last line, then the
    zero fill. The replay reads the whole lines only, and the zeros neither stop it early nor become a row."""
    import json

    from itff_platform.monitoring.prediction_log import SEGMENT_BYTES, _json_value

    folder = tmp_path / "wal"
    folder.mkdir()
    lines = b"".join(json.dumps(record(i), default=_json_value).encode() + b"\n" for i in range(3))
    torn = b'{"request_id": "r3", "logged_at": "2026-'
    (folder / "999999-1.jsonl").write_bytes((lines + torn).ljust(SEGMENT_BYTES, b"\0"))
    restarted = PredictionLog(tmp_path / "predictions", flush_rows=1000, flush_s=60, write_ahead=folder)
    assert restarted.replayed == 3
    restarted.close()
    assert delta_rows(tmp_path / "predictions")["request_id"].to_list() == ["r0", "r1", "r2"]


@pytest.mark.parametrize(
    "kept, failures",
    [(10, 1), (-1, 1), (10, 2)],
    ids=["ten bytes", "all but its newline", "then a write of nothing"],
)
def test_a_write_that_fails_part_way_leaves_a_torn_line_that_the_next_line_does_not_join(
    tmp_path, monkeypatch, kept, failures
):
    """A line cut short by a failed write (a full disk) is refused to its request; the next line must still read
    back whole, not glued to the torn one's bytes (also after a second write that fails before its first byte), and
    must not complete a line cut just before its newline into a valid record (a replay would store a row for the
    refused request)."""
    import errno

    from itff_platform.monitoring import prediction_log

    wal = prediction_log.WriteAhead(tmp_path / "wal")
    real_pwrite = os.pwrite

    def half_then_full(fd, data, offset):
        monkeypatch.setattr(prediction_log.os, "pwrite", lambda *_: (_ for _ in ()).throw(OSError(errno.ENOSPC, "")))
        return real_pwrite(fd, data[:kept], offset)

    wal.write(b'{"request_id": "r0"}\n')
    monkeypatch.setattr(prediction_log.os, "pwrite", half_then_full)
    for _ in range(failures):
        with pytest.raises(OSError):
            wal.write(b'{"request_id": "refused"}\n')
    monkeypatch.setattr(prediction_log.os, "pwrite", real_pwrite)
    wal.write(b'{"request_id": "r2"}\n')
    assert [r["request_id"] for r in segment_records(wal._path)] == ["r0", "r2"]
    wal.close()


def test_the_waiters_of_one_event_loop_are_answered_with_one_wake_up(tmp_path, monkeypatch):
    """Each call_soon_threadsafe writes the loop's self-pipe and costs the loop a turn: one per group commit and
    loop, not one per waiting request (8 before, for 8 requests answered by one fsync)."""
    import asyncio

    log = PredictionLog(tmp_path / "predictions", flush_rows=1000, flush_s=60, write_ahead=tmp_path / "wal")
    assert log.wal is not None
    wake_ups: list[object] = []

    async def batch() -> None:
        loop = asyncio.get_running_loop()
        real = loop.call_soon_threadsafe
        monkeypatch.setattr(loop, "call_soon_threadsafe", lambda *a, **k: (wake_ups.append(a[0]), real(*a, **k))[1])
        assert log.wal is not None
        await asyncio.gather(*(log.append_durable(record(i)) for i in range(8)))
        assert log.wal._synced == 8

    asyncio.run(batch())
    log.close()
    assert len(wake_ups) == 1
    assert delta_rows(tmp_path / "predictions").height == 8


def test_a_sealed_segment_keeps_its_lines_not_its_zero_fill(tmp_path, monkeypatch):
    """While Delta is down every flush seals a segment that waits for a later commit: cut to its lines, each takes
    a few KB, not a zero fill of 512 KiB."""
    import asyncio

    from itff_platform.monitoring import prediction_log

    def lake_down(path, records):
        raise OSError("lake unreachable")

    monkeypatch.setattr(prediction_log, "write_records", lake_down)
    log = PredictionLog(tmp_path / "predictions", flush_rows=1000, flush_s=60, write_ahead=tmp_path / "wal")
    assert log.wal is not None
    for i in range(3):
        asyncio.run(log.append_durable(record(i)))
        assert log.flush() == 0
    sealed = [path for path, _ in log.wal._sealed]
    assert len(sealed) == 3
    assert all(0 < path.stat().st_size < 4096 for path in sealed)
    assert [r["request_id"] for path in sealed for r in segment_records(path)] == ["r0", "r1", "r2"]
    monkeypatch.undo()
    assert log.flush() == 3
    log.close()
    assert delta_rows(tmp_path / "predictions")["request_id"].to_list() == ["r0", "r1", "r2"]


def test_lines_acknowledged_after_a_failed_flush_are_replayed_past_the_refused_lines_zero_fill(tmp_path):
    """A failed flush refuses its lines, and the kernel may drop their pages: on disk they keep the zero fill. Lines
    written after it are acknowledged by the next good flush, so the replay must read past that hole; stopping at the
    first zero byte lost them after a power loss."""
    import json

    from itff_platform.monitoring.prediction_log import SEGMENT_BYTES, _json_value

    folder = tmp_path / "wal"
    folder.mkdir()

    def lines(ids) -> bytes:
        return b"".join(json.dumps(record(i), default=_json_value).encode() + b"\n" for i in ids)

    refused_hole = bytes(2 * 4096)  # the refused lines' pages, as the disk kept them
    image = lines(range(3)) + refused_hole + lines(range(10, 13))
    (folder / "999999-1.jsonl").write_bytes(image.ljust(SEGMENT_BYTES, b"\0"))
    restarted = PredictionLog(tmp_path / "predictions", flush_rows=1000, flush_s=60, write_ahead=folder)
    restarted.close()
    assert sorted(delta_rows(tmp_path / "predictions")["request_id"].to_list()) == sorted(
        f"r{i}" for i in [0, 1, 2, 10, 11, 12]
    )


def test_a_line_written_while_a_flush_fails_is_never_answered_as_durable(tmp_path, monkeypatch):
    """The flush covers the lines written before it started; a line written while it runs may land in a page whose
    writeback fails, which the kernel then marks clean, so the next good flush would skip it and still succeed."""
    import asyncio
    import errno

    from itff_platform.monitoring import prediction_log

    wal = prediction_log.WriteAhead(tmp_path / "wal")
    real_flush, during = os.fdatasync, []

    def write_then_fail(fd):
        during.append(wal.write(b'{"request_id": "during"}\n'))
        raise OSError(errno.EIO, "Input/output error")

    first = wal.write(b'{"request_id": "before"}\n')
    monkeypatch.setattr(prediction_log.os, "fdatasync", write_then_fail)
    with pytest.raises(OSError):
        asyncio.run(wal.synced(first))
    monkeypatch.setattr(prediction_log.os, "fdatasync", real_flush)
    asyncio.run(wal.synced(wal.write(b'{"request_id": "after"}\n')))  # a good flush after the failure
    with pytest.raises(OSError):
        asyncio.run(wal.synced(during[0]))
    wal.close()


def test_a_line_cut_just_before_its_newline_at_the_end_of_a_segment_is_not_replayed(tmp_path):
    """The last line of a segment (its writer died, or it was sealed) cut before its newline was refused to its
    request: no line follows to mark it, so the replay must keep only lines that end in a newline."""
    from itff_platform.monitoring.prediction_log import SEGMENT_BYTES

    folder = tmp_path / "wal"
    folder.mkdir()
    image = b'{"request_id": "r0"}\n{"request_id": "refused"}'
    for name, data in (("1-1.jsonl", image), ("1-2.jsonl", image.ljust(SEGMENT_BYTES, b"\0"))):
        (folder / name).write_bytes(data)
        assert [r["request_id"] for r in segment_records(folder / name)] == ["r0"], name


def test_a_line_written_but_not_yet_counted_when_a_flush_fails_is_never_answered_as_durable(tmp_path, monkeypatch):
    """write() counts a line after writing it: a flush failing in between refuses the lines counted so far, so the
    line must see the failure itself (its page may be among the failed ones, marked clean by the kernel)."""
    import asyncio
    import errno

    from itff_platform.monitoring import prediction_log

    wal = prediction_log.WriteAhead(tmp_path / "wal")
    real_pwrite = os.pwrite

    def write_then_a_flush_fails(fd, data, offset):
        done = real_pwrite(fd, data, offset)
        with wal._lock:  # what the flush thread's failure does, between this write and its count
            counted = wal._seq
            error = OSError(errno.EIO, "Input/output error")
            wal._last_failure = error
        wal._settle(counted, error)
        return done

    monkeypatch.setattr(prediction_log.os, "pwrite", write_then_a_flush_fails)
    caught = wal.write(b'{"request_id": "caught"}\n')
    monkeypatch.setattr(prediction_log.os, "pwrite", real_pwrite)
    asyncio.run(wal.synced(wal.write(b'{"request_id": "after"}\n')))  # a good flush after the failure
    with pytest.raises(OSError):
        asyncio.run(wal.synced(caught))
    wal.close()


def test_a_failed_segment_preparation_leaves_no_descriptor_or_file_behind(tmp_path, monkeypatch):
    """A full disk fails the zero fill of the next segment at every flush retry: each try must close its descriptor
    and remove its half-made file."""
    import errno

    from itff_platform.monitoring import prediction_log

    wal = prediction_log.WriteAhead(tmp_path / "wal")
    open_fds = len(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(prediction_log.os, "pwrite", lambda *_: (_ for _ in ()).throw(OSError(errno.ENOSPC, "")))
    for _ in range(5):
        with pytest.raises(OSError):
            wal.new_segment()
    monkeypatch.undo()
    assert len(os.listdir("/proc/self/fd")) == open_fds
    assert not list((tmp_path / "wal").glob("*.new"))
    wal.close()


def test_a_flush_cleans_expired_log_files_every_hundred_commits_not_at_each(tmp_path, monkeypatch):
    """Delta's default post-commit cleanup lists and stats every file of _delta_log at every commit: each worker's
    flush paid it (14,000 statx calls in 8 s under load). Checkpoints stay, so loading the table stays bounded."""
    import deltalake

    from itff_platform.monitoring import prediction_log

    hooks, cleanups = [], []
    real = deltalake.write_deltalake

    def spy(target, data, **options):
        hooks.append(options.get("post_commithook_properties"))
        return real(target, data, **options)

    monkeypatch.setattr(deltalake, "write_deltalake", spy)
    monkeypatch.setattr(prediction_log, "CLEANUP_EVERY", 2)
    monkeypatch.setattr(prediction_log, "clean_expired_log_files", cleanups.append)
    log = PredictionLog(tmp_path / "predictions", flush_rows=1000, flush_s=60)
    for i in range(5):
        log.append(record(i))
        assert log.flush() == 1
    log.close()
    assert len(hooks) == 5
    assert all(h is not None and not h.cleanup_expired_logs and h.create_checkpoint for h in hooks)
    assert cleanups == [tmp_path / "predictions"] * 2  # after the 2nd and the 4th commit
    assert delta_rows(tmp_path / "predictions").height == 5


def test_expired_log_files_are_cleaned_without_touching_rows(tmp_path):
    from itff_platform.monitoring.prediction_log import clean_expired_log_files

    log = PredictionLog(tmp_path / "predictions", flush_rows=1000, flush_s=60)
    for i in range(3):
        log.append(record(i))
        log.flush()
    log.close()
    clean_expired_log_files(tmp_path / "predictions")  # nothing has expired: nothing may go
    assert delta_rows(tmp_path / "predictions").height == 3


def test_the_default_flush_commits_thousands_of_rows_at_a_time():
    """A Delta append costs 25-220 ms of CPU (more as the table grows, benchmarks/bench_prediction_log.py): at 500
    rows a flush that was up to 0.4 ms per request, on the worker answering them."""
    from itff_platform.settings import ServingSettings

    assert ServingSettings.model_fields["prediction_log_flush_rows"].default >= 5000
    assert ServingSettings.model_fields["prediction_log_flush_s"].default >= 10
    assert PredictionLog.__init__.__defaults__[:2] == (5000, 10.0)


def test_a_failing_lake_is_retried_after_a_pause_not_in_a_busy_loop(tmp_path, monkeypatch):
    """With the lake gone the rows stay due, and the writer thread retried (and logged) as fast as it could."""
    import time

    from itff_platform.monitoring import prediction_log

    attempts = []

    def lake_down(path, records):
        attempts.append(time.monotonic())
        raise OSError("lake unreachable")

    monkeypatch.setattr(prediction_log, "write_records", lake_down)
    log = PredictionLog(tmp_path / "predictions", flush_rows=1, flush_s=60)
    log.append(record(0))
    deadline = time.monotonic() + 10
    while not attempts and time.monotonic() < deadline:  # the first try, at once (a loaded machine may delay it)
        time.sleep(0.01)
    time.sleep(0.5)
    log.close()
    # The first try comes at once, the next a second later; close() makes its own final try. A busy loop made
    # hundreds in these 0.5 s.
    assert 1 <= len(attempts) <= 3


def test_a_large_segment_left_by_a_crash_replays_without_a_list_entry_per_zero_byte(tmp_path):
    """Split on every zero byte, a 32 MiB segment of a few lines made a list of 33 million entries (404 MB, 6 s)."""
    import json
    import tracemalloc

    from itff_platform.monitoring.prediction_log import MAX_SEGMENT_BYTES, _json_value, replay_segments

    folder = tmp_path / "wal"
    folder.mkdir()
    lines = b"".join(json.dumps(record(i), default=_json_value).encode() + b"\n" for i in range(3))
    (folder / "999999-1.jsonl").write_bytes(lines.ljust(MAX_SEGMENT_BYTES, b"\0"))
    tracemalloc.start()
    try:
        assert replay_segments(tmp_path / "predictions", folder) == 3
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * MAX_SEGMENT_BYTES  # the segment's bytes and a copy or two, not 8 bytes per zero
    assert delta_rows(tmp_path / "predictions")["request_id"].to_list() == ["r0", "r1", "r2"]


def test_a_segment_too_large_for_the_disk_falls_back_to_the_first_size(tmp_path, monkeypatch):
    """On a nearly full disk the fill asked for grew with the open segment, and commits stopped."""
    import asyncio
    import errno

    from itff_platform.monitoring.prediction_log import SEGMENT_BYTES, WriteAhead

    real = WriteAhead._prepare_segment

    def small_disk(self, fd, temporary, final, size):
        if size > SEGMENT_BYTES:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, fd, temporary, final, size)

    monkeypatch.setattr(WriteAhead, "_prepare_segment", small_disk)
    log = PredictionLog(tmp_path / "predictions", flush_rows=100_000, flush_s=60, write_ahead=tmp_path / "wal")
    assert log.wal is not None

    async def many():
        await asyncio.gather(*(log.append_durable({**record(i), "symbol": "X" * 900}) for i in range(600)))

    asyncio.run(many())
    assert log.flush() == 600
    log.close()
    assert delta_rows(tmp_path / "predictions").height == 600
    assert list((tmp_path / "wal").glob("*.new")) == []


def test_the_next_segment_is_sized_by_what_the_open_one_took():
    """A busy worker's 5,000-row flushes (~3 MB of lines) outgrew a fixed 512 KiB segment, and every line past it
    changed the file's size, a journal commit at each fdatasync; an idle worker keeps small segments."""
    from itff_platform.monitoring.prediction_log import MAX_SEGMENT_BYTES, SEGMENT_BYTES, segment_bytes

    assert segment_bytes(0) == segment_bytes(100_000) == SEGMENT_BYTES
    assert segment_bytes(3_000_000) == 6_029_312  # twice, rounded up to 64 KiB
    assert segment_bytes(10**9) == MAX_SEGMENT_BYTES


def test_a_flush_after_many_lines_makes_a_larger_zero_filled_segment(tmp_path):
    import asyncio
    import os

    from itff_platform.monitoring.prediction_log import SEGMENT_BYTES

    log = PredictionLog(tmp_path / "predictions", flush_rows=100_000, flush_s=60, write_ahead=tmp_path / "wal")
    assert log.wal is not None

    async def many():
        await asyncio.gather(*(log.append_durable({**record(i), "symbol": "X" * 900}) for i in range(600)))

    asyncio.run(many())
    used = log.wal._end
    assert used > SEGMENT_BYTES  # 600 lines of ~1 KB outgrew the first segment
    assert log.flush() == 600
    assert os.fstat(log.wal._fd).st_size >= 2 * used
    log.close()
    assert delta_rows(tmp_path / "predictions").height == 600
