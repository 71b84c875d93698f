"""A run whose worker is killed with kill -9 must end FAILURE, be retried, and not block the queue.

Real processes throughout: a `dagster-daemon` on a temporary DAGSTER_HOME configured with the project's own
dagster.yaml (run launcher, run monitoring, run retries, one run at a time), a run worker that is killed together
with the daemon and its code server (what a `kill -9` of `make dev` does), and a second daemon that must clean up.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus

ROOT = Path(__file__).resolve().parents[2]
DAEMON = Path(sys.executable).parent / "dagster-daemon"

# Two jobs: slow_job hangs while the `hang` file exists; quick_job returns at once. The sensor submits slow_job,
# and quick_job only once slow_job's worker is running, so quick_job waits in the queue behind it.
DEFINITIONS = """
import os, time
from pathlib import Path
from dagster import DefaultSensorStatus, Definitions, RunRequest, asset, define_asset_job, in_process_executor, sensor

MARKS = Path(os.environ["ZOMBIE_MARKS"])

@asset
def slow_step():
    (MARKS / f"worker-{os.getpid()}").write_text("")
    while (MARKS / "hang").exists():
        time.sleep(0.2)
    return 1

@asset
def quick_step():
    return 2

# In-process: the step runs in the run worker itself, whose pid run monitoring watches.
slow_job = define_asset_job("slow_job", ["slow_step"], executor_def=in_process_executor)
quick_job = define_asset_job("quick_job", ["quick_step"], executor_def=in_process_executor)

@sensor(jobs=[slow_job, quick_job], minimum_interval_seconds=1, default_status=DefaultSensorStatus.RUNNING)
def submit(context):
    yield RunRequest(run_key="slow", job_name="slow_job")
    if any(MARKS.glob("worker-*")):
        yield RunRequest(run_key="quick", job_name="quick_job")

defs = Definitions(assets=[slow_step, quick_step], jobs=[slow_job, quick_job], sensors=[submit])
"""


def instance_yaml(home: Path) -> dict:
    """The project's dagster.yaml with its storage moved into `home`; every other setting as shipped."""
    config = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    config["storage"] = {"sqlite": {"base_dir": str(home / "storage")}}
    config["local_artifact_storage"]["config"]["base_dir"] = str(home)
    config["compute_logs"]["config"]["base_dir"] = str(home / "compute_logs")
    return config


def start_daemon(home: Path, module: Path, marks: Path, log: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "ZOMBIE_MARKS": str(marks),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    # A session of its own: killing its process group kills the daemon, its code server and the run worker at once.
    return subprocess.Popen(
        [str(DAEMON), "run", "-f", str(module)],
        cwd=home,
        env=env,
        start_new_session=True,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def stop(process: subprocess.Popen, sig=signal.SIGTERM) -> None:
    if process.poll() is None:
        os.killpg(process.pid, sig)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_for(condition, timeout: float, what: str, log: Path, instance: DagsterInstance | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{diagnosis(log, instance)}")


def diagnosis(log: Path, instance: DagsterInstance | None) -> str:
    """What a timeout needs to be explained: every run with its status, retry tags and last engine events, and the
    daemon log without the sensor's ticks (which alone fill any tail of it)."""
    lines = [line for line in log.read_text().splitlines() if "SensorDaemon" not in line]
    parts = ["--- daemon log, sensor ticks left out ---", "\n".join(lines)[-8000:]]
    if instance is not None:
        parts.append("--- runs, oldest first ---")
        for job, runs in runs_by_job(instance).items():
            for run in runs:
                tags = {k: v for k, v in run.tags.items() if "retry" in k or "failure" in k}
                parts.append(f"{job} {run.run_id[:8]} {run.status.value} parent={run.parent_run_id} {tags}")
                events = [e.message for e in instance.all_logs(run.run_id) if e.message and not e.step_key]
                parts.extend(f"    {m[:200]}" for m in events[-6:])
    return "\n".join(parts)


def event_log_consumer_has_cursor(instance: DagsterInstance) -> bool:
    """The daemon's EventLogConsumer (which submits retries) has saved where it reads the event log from. A daemon
    killed before it did leaves none, and the next daemon starts reading at the newest event, so a failure written
    before its first read (run monitoring marks the zombie FAILURE at once) would never be retried."""
    keys = {
        f"EVENT_LOG_CONSUMER_CURSOR-{t.value}" for t in (DagsterEventType.RUN_FAILURE, DagsterEventType.RUN_SUCCESS)
    }
    return len(instance.daemon_cursor_storage.get_cursor_values(keys)) == len(keys)


def runs_by_job(instance: DagsterInstance) -> dict[str, list]:
    runs = {}
    for run in reversed(instance.get_runs()):  # oldest first
        runs.setdefault(run.job_name, []).append(run)
    return runs


def test_project_dagster_yaml_enables_run_monitoring_and_retries():
    config = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    assert config["run_monitoring"]["enabled"] is True and config["run_monitoring"]["max_resume_run_attempts"] == 0
    assert config["run_retries"]["enabled"] is True and config["run_retries"]["max_retries"] >= 1
    assert config["run_launcher"]["class"] == "LocalRunLauncher"
    assert config["concurrency"]["runs"]["max_concurrent_runs"] == 1


@pytest.mark.timeout(240)
def test_a_killed_run_is_failed_by_run_monitoring_retried_and_the_queue_moves_on(tmp_path):
    home, marks = tmp_path / "home", tmp_path / "marks"
    home.mkdir(), marks.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(instance_yaml(home)))
    module = tmp_path / "zombie_defs.py"
    module.write_text(DEFINITIONS)
    (marks / "hang").touch()
    log = tmp_path / "daemon.log"
    instance = DagsterInstance.from_config(str(home))
    started = time.monotonic()

    first = start_daemon(home, module, marks, log)
    try:
        wait_for(
            lambda: (
                any(marks.glob("worker-*"))
                and [r for r in runs_by_job(instance).get("quick_job", []) if r.status == DagsterRunStatus.QUEUED]
                and event_log_consumer_has_cursor(instance)
            ),
            120,
            "slow_job's worker to run, quick_job to be queued behind it and the event log consumer's cursor",
            log,
            instance,
        )
        assert runs_by_job(instance)["slow_job"][0].status == DagsterRunStatus.STARTED
    finally:
        stop(first, signal.SIGKILL)  # kill -9 of the whole `make dev`: daemon, code server and run worker
    worker_pid = int(next(marks.glob("worker-*")).name.split("-")[1])
    wait_for(lambda: not _alive(worker_pid), 10, f"the run worker (pid {worker_pid}) to be gone", log)
    slow = runs_by_job(instance)["slow_job"][0]
    # The zombie this test is about: its worker is dead, its run still says STARTED, and quick_job waits forever.
    assert instance.get_run_by_id(slow.run_id).status == DagsterRunStatus.STARTED
    assert runs_by_job(instance)["quick_job"][0].status == DagsterRunStatus.QUEUED
    (marks / "hang").unlink()  # the retry may now finish
    killed_at = time.monotonic()

    second = start_daemon(home, module, marks, log)
    try:
        wait_for(
            lambda: instance.get_run_by_id(slow.run_id).status == DagsterRunStatus.FAILURE,
            90,
            "run monitoring to mark the killed run FAILURE",
            log,
            instance,
        )
        failed_at = time.monotonic()
        wait_for(
            lambda: runs_by_job(instance)["quick_job"][0].status == DagsterRunStatus.SUCCESS,
            120,
            "the queued run to run once the zombie was gone",
            log,
            instance,
        )
        retried = wait_for(
            lambda: [r for r in runs_by_job(instance)["slow_job"][1:] if r.status == DagsterRunStatus.SUCCESS],
            120,
            "the automatic retry of the killed run to succeed",
            log,
            instance,
        )
        done_at = time.monotonic()
    finally:
        stop(second)

    assert retried[0].parent_run_id == slow.run_id and retried[0].tags.get("dagster/retry_number") == "1"
    messages = [e.message for e in instance.all_logs(slow.run_id) if e.message]
    assert any(f"run worker pid {worker_pid}" in m for m in messages), messages[-5:]
    print(
        f"\nzombie failed {failed_at - killed_at:.1f}s after the second daemon started, queue and retry done "
        f"{done_at - killed_at:.1f}s after; whole test {time.monotonic() - started:.1f}s"
    )


def _alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
