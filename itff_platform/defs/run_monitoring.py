"""A run launcher that lets Dagster's run monitoring see a dead run worker on this machine.

Dagster's DefaultRunLauncher cannot tell whether a run's worker process is alive, so run monitoring skips its
STARTED runs. A materialization killed with `kill -9` (an `itff run`, or `dagster dev` with its code server and
workers) then stays STARTED forever, and with `max_concurrent_runs: 1` the queue never moves again.

LocalRunLauncher launches exactly as the default one does. It adds the health check: the run worker is the
process that reported RUN_START (its pid is on that event). The worker is gone when no process has that pid, when
the process is a zombie, or when the pid was reused by a process started after the run did. The daemon's
run monitoring (`run_monitoring` in dagster.yaml) then marks the run FAILURE, and run retries launch it again.

Run workers of this launcher live on this machine, so a pid is meaningful here; runs are never judged by a
daemon on another host (the instance's storage is a local SQLite file).
"""

from __future__ import annotations

import psutil
from dagster import DagsterEventType, DagsterRun, DefaultRunLauncher
from dagster._core.launcher import CheckRunHealthResult, WorkerStatus

# A process started this long after RUN_START cannot be the run's worker: the pid was reused.
CLOCK_SLACK_S = 2.0


def worker_state(pid: int, run_started_at: float) -> tuple[bool, str]:
    """(alive, why) for the run worker with `pid`, which reported RUN_START at `run_started_at` (epoch seconds)."""
    try:
        process = psutil.Process(pid)
        status, created = process.status(), process.create_time()
    except psutil.NoSuchProcess:
        return False, f"run worker pid {pid} no longer exists"
    except psutil.AccessDenied:
        return True, f"run worker pid {pid} exists (owned by another user)"
    if status == psutil.STATUS_ZOMBIE:
        return False, f"run worker pid {pid} has exited (zombie, not yet reaped)"
    if created > run_started_at + CLOCK_SLACK_S:
        return False, f"run worker pid {pid} exited; the pid now belongs to a process started after the run"
    return True, f"run worker pid {pid} is alive ({status})"


class LocalRunLauncher(DefaultRunLauncher):
    """DefaultRunLauncher plus a worker health check, so run monitoring fails the runs of dead workers."""

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        starts = self._instance.all_logs(run.run_id, of_type=DagsterEventType.RUN_START)
        event = starts[-1] if starts else None
        if event is None or event.dagster_event is None or event.dagster_event.pid is None:
            # STARTED is set by the RUN_START event itself, so this is a race with the event's write: wait.
            return CheckRunHealthResult(WorkerStatus.RUNNING, "no RUN_START with a pid yet")
        alive, why = worker_state(event.dagster_event.pid, event.timestamp)
        return CheckRunHealthResult(
            WorkerStatus.RUNNING if alive else WorkerStatus.FAILED, why, run_worker_id=str(event.dagster_event.pid)
        )
