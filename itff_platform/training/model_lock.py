"""One promotion at a time per registered model, across processes and machines.

A promotion reads the champion and its history tag, decides, then writes both back: two at once (two researchers,
or a researcher and the schedule) would each decide against the champion it read and the later write would drop
the earlier one's history entry. So promote, force and rollback hold a lock named after the model for the whole
read-decide-write. Under the cluster profile the researchers share no disk, only the servers: the lock is a
Postgres session advisory lock in the mlflow database (released with the connection, so a killed holder frees it).
Embedded, every writer shares the MLflow folder: an flock on a file there (released when the process dies)."""

from __future__ import annotations

import fcntl
import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

from itff_platform.settings import Settings


def lock_key(name: str) -> int:
    """A stable signed 64-bit key for pg_advisory_lock (Python's hash() differs between processes)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


@contextmanager
def model_lock(settings: Settings, name: str) -> Iterator[None]:
    """Held while the body runs; blocks while another process (or thread) holds the same model's lock."""
    if settings.clustered:
        import psycopg

        with psycopg.connect(settings.postgres_database("mlflow"), autocommit=True) as connection:
            connection.execute("SELECT pg_advisory_lock(%s)", (lock_key(name),))
            try:
                yield
            finally:
                connection.execute("SELECT pg_advisory_unlock(%s)", (lock_key(name),))
        return
    folder = settings.tracking.mlflow_dir / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    # One open() per holder: flock conflicts between open file descriptions, so threads of one process wait too.
    with (folder / f"{name}.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
