"""What a second worker buys on this machine, and what N machines would take for the whole desk.

    make bench-cluster
    python benchmarks/bench_cluster.py --family boosting --trials 8 --months 6

1. Optuna: one study (the packaged sample, BTCUSDT 1h direction, the chosen family, pruning off so every run
   has the same budget) with study_workers 1, then 2: trials per minute over the search phase, and the whole
   study's wall time (setup, holdout, evaluation and registration stay in one process).
2. Executor: lake partitions (symbol x month: raw -> bronze -> silver, one Dagster run each) through the cluster
   profile's dagster-celery executor with 1, then 2 celery workers, against a throwaway Postgres and Redis
   (itff_platform.cluster). One runner process per symbol submits that symbol's months in order, all symbols at
   once, so a second worker has steps to take. Each runner's first month is untimed (imports, workers' first task).

From the measured study time it projects the wall time of 50 symbols x 3 targets on N machines of 2 workers, and
writes that table into docs/scale-out-optuna.md. Figures taken while other work loads the cores are noisy: the load
average is printed and recorded with them. Results go to benchmarks/results/cluster.json."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from itff_platform.local_http import free_port

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "scale-out-optuna.md"
BEGIN, END = "<!-- bench-cluster:begin -->", "<!-- bench-cluster:end -->"
DESK_SYMBOLS, MACHINES = 50, (1, 2, 4, 8, 16)


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default="boosting", help="the family of the measured study (default boosting)")
    parser.add_argument("--trials", type=int, default=8, help="the study's budget of trials (default 8)")
    parser.add_argument("--months", type=int, default=3, help="timed lake months per symbol (default 3)")
    parser.add_argument("--lake-symbol", help=argparse.SUPPRESS)  # a runner process of lake_runs
    return parser.parse_args()


def load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def study_runs(family: str, trials: int) -> dict[int, dict]:
    """The same study (seed, budget, folds) with 1 and 2 processes; pruning off so both run every trial."""
    from itff_platform.features.silver import build_features
    from itff_platform.market.sample import SampleCandleSource
    from itff_platform.settings import Settings
    from itff_platform.training.dataset import training_data
    from itff_platform.training.study import run_study
    from itff_platform.training.train import folds_for

    measured = {}
    with tempfile.TemporaryDirectory() as scratch:
        # No wall-clock budget: a loaded machine must not cut the 1-process study short of the trials it compares.
        settings = Settings(mlflow_dir=Path(scratch) / "mlflow", pruner="none", trials=trials, study_timeout_s=1e6)
        candles = SampleCandleSource().fetch(
            "BTCUSDT", "1h", datetime(2021, 1, 1, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC)
        )
        silver = build_features(candles.filter(pl.col("volume") > 0), settings).collect()
        data = training_data(settings, "BTCUSDT", "direction", silver=silver)
        folds = folds_for(data, settings)
        # Not measured: the first study of a process pays for imports and MLflow's first registration.
        run_study(data, family, folds, settings, lambda _: None, n_trials=1)
        for workers in (1, 2):
            chosen = settings.model_copy(update={"study_workers": workers})
            outcome = run_study(data, family, folds, chosen, lambda _: None)
            phases = outcome.phases or {}
            done = outcome.trials_completed + outcome.trials_pruned
            assert done == trials, f"{workers} process(es) ran {done} of {trials} trials"
            measured[workers] = {
                "trials": done,
                "search_s": round(phases["search"], 2),
                "study_s": round(outcome.seconds, 2),
                "trials_per_minute": round(done / phases["search"] * 60, 2),
                "load_average": load(),
            }
            print(f"optuna, {workers} process(es): {measured[workers]}", flush=True)
    return measured


# The lake through the cluster profile's real executor: a throwaway Postgres (Dagster's storage) and Redis (the
# broker) from itff_platform.cluster, `celery -A itff_platform.defs.celery_worker worker` as Procfile.cluster runs it.
WORKER = ["-m", "celery", "-A", "itff_platform.defs.celery_worker", "worker", "-Q", "dagster", "-c", "1"]
WORKER_FLAGS = ["--without-gossip", "--without-mingle", "--loglevel", "INFO"]


def lake_symbol(symbol: str, months: int) -> None:
    """A runner process (`--lake-symbol`): one Dagster run per partition of `symbol` (raw -> bronze -> silver, each
    step a celery task), month by month (silver reads the months before). The first month warms this process and
    the workers; then it says `warm` and waits for `go` on stdin, and prints the timed months' seconds."""
    from dagster import DagsterInstance, MultiPartitionKey

    from itff_platform.cli import CLI_JOBS
    from itff_platform.cli_runs import execute_job
    from itff_platform.defs.partitions import lake_partitions
    from itff_platform.settings import get_settings

    job = CLI_JOBS["lake"][0]
    keys = sorted(lake_partitions(get_settings()).get_partitions_def_for_dimension("month").get_partition_keys())
    instance = DagsterInstance.get()
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}

    def run(month: str) -> None:
        key = MultiPartitionKey({"symbol": symbol, "month": month})
        assert execute_job(job, instance, partition_key=key, run_config=quiet).success, f"{symbol} {month}"

    run(keys[0])
    print("warm", flush=True)
    sys.stdin.readline()
    started = time.perf_counter()
    for month in keys[1 : months + 1]:
        run(month)
    print(f"{time.perf_counter() - started:.3f}", flush=True)


def _wait_for(path: Path, text: str, processes: list[subprocess.Popen], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while text not in (path.read_text() if path.exists() else ""):
        if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
            raise RuntimeError(f"{path.name}: no {text!r}: {path.read_text()[-2000:] if path.exists() else ''}")
        time.sleep(0.3)


def lake_runs(months: int) -> dict[int, dict]:
    """Lake partitions per minute through dagster-celery with 1, then 2 workers: one runner process per symbol,
    all at once, so two workers have steps to share. Each configuration gets a fresh lake and fresh workers."""
    from itff_platform.cluster import postgres, redis
    from itff_platform.settings import Settings

    symbols = Settings().symbols
    scratch = Path(tempfile.mkdtemp(prefix="itff-bench-cluster-"))
    os.chmod(scratch, 0o755)  # as root, Postgres runs as the postgres user, who must reach its data directory
    urls = {"postgres": f"postgresql://itff@127.0.0.1:{free_port()}", "redis": f"redis://127.0.0.1:{free_port()}/0"}
    postgres.start(scratch / "pg", urls["postgres"], durable=False)
    redis.start(scratch / "redis", urls["redis"])
    settings = Settings(profile="cluster", postgres_url=urls["postgres"], redis_url=urls["redis"])
    dagster_home = scratch / "dagster"
    dagster_home.mkdir()
    shutil.copy(ROOT / "deploy" / "native" / "dagster.yaml", dagster_home / "dagster.yaml")
    measured = {}
    try:
        for workers in (1, 2):
            home = scratch / f"workers-{workers}"
            home.mkdir()
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith(("ITFF_", "DAGSTER_"))},
                "PYTHONPATH": str(ROOT),
                "ITFF_HOME": str(home),
                "ITFF_PROFILE": "cluster",
                "ITFF_POSTGRES_URL": urls["postgres"],
                "ITFF_REDIS_URL": urls["redis"],
                "ITFF_PROGRESS_BAR": "false",
                "DAGSTER_HOME": str(dagster_home),
                "DAGSTER_POSTGRES_URL": settings.postgres_database("dagster", driver="psycopg2"),
            }
            processes: list[subprocess.Popen] = []
            try:
                for n in range(1, workers + 1):
                    log = home / f"worker{n}.log"
                    with log.open("w") as out:
                        command = [sys.executable, *WORKER, "-n", f"bench-w{n}@%h", *WORKER_FLAGS]
                        processes.append(subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT))
                    _wait_for(log, "ready.", processes)
                runners = [
                    subprocess.Popen(
                        [sys.executable, __file__, "--lake-symbol", symbol, "--months", str(months)],
                        env=env,
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        text=True,
                    )
                    for symbol in symbols
                ]
                processes += runners
                for runner in runners:  # every runner and worker warm (one untimed month each) before the clock
                    assert runner.stdout is not None
                    while (line := runner.stdout.readline()) and line.strip() != "warm":
                        pass
                    assert line, f"a runner stopped before its first month was built (exit {runner.wait()})"
                started = time.perf_counter()
                outputs = [runner.communicate("go\n", timeout=1800)[0] for runner in runners]
                seconds = time.perf_counter() - started
                assert all(r.returncode == 0 for r in runners), outputs
            finally:
                for process in processes:
                    if process.poll() is None:
                        process.terminate()
                for process in processes:
                    process.wait(30)
            partitions = len(symbols) * months
            measured[workers] = {
                "partitions": partitions,
                "seconds": round(seconds, 2),
                "partitions_per_minute": round(partitions / seconds * 60, 2),
                "load_average": load(),
            }
            print(f"lake (dagster-celery), {workers} worker(s): {measured[workers]}", flush=True)
    finally:
        redis.stop(scratch / "redis")
        postgres.stop(scratch / "pg", mode="immediate")
        shutil.rmtree(scratch, ignore_errors=True)
    return measured


def projection(study_s: float, studies_per_pair: int, partitions_per_minute: float, months: int) -> list[dict]:
    """50 symbols x 3 targets: each machine runs one study at a time on its 2 workers (the measured 2-worker study
    time for every study), machines share the studies evenly; the lake's partitions likewise at the measured
    2-worker rate. Assumes the shared Postgres, MLflow server and lake keep up, which one machine cannot show."""
    studies = DESK_SYMBOLS * 3 * studies_per_pair
    partitions = DESK_SYMBOLS * months
    rows = []
    for machines in MACHINES:
        training_h = math.ceil(studies / machines) * study_s / 3600
        lake_h = partitions / (machines * partitions_per_minute) / 60
        rows.append(
            {
                "machines": machines,
                "studies_per_machine": math.ceil(studies / machines),
                "training_h": round(training_h, 2),
                "lake_h": round(lake_h, 2),
                "total_h": round(training_h + lake_h, 2),
            }
        )
    return rows


def markdown(result: dict) -> str:
    optuna_, lake = result["optuna"], result["lake"]
    lines = [
        BEGIN,
        f"Measured by `make bench-cluster` on {result['machine']}, {result['date']}, load average "
        f"{result['load_average']} (noisy where the load is above the cores).",
        "",
        "| measure | 1 worker | 2 workers | speedup |",
        "|---|---|---|---|",
        f"| Optuna trials/min ({result['family']}, {optuna_['1']['trials']} trials, search phase) | "
        f"{optuna_['1']['trials_per_minute']} | {optuna_['2']['trials_per_minute']} | {result['speedups']['trials']}x |",
        f"| whole study, s | {optuna_['1']['study_s']} | {optuna_['2']['study_s']} | {result['speedups']['study']}x |",
        f"| lake partitions/min (dagster-celery, {lake['1']['partitions']} partitions) | {lake['1']['partitions_per_minute']} | "
        f"{lake['2']['partitions_per_minute']} | {result['speedups']['partitions']}x |",
        "",
        f"Projected wall time for {DESK_SYMBOLS} symbols x 3 targets ({result['studies_per_pair']} studies per "
        f"symbol x target at {optuna_['2']['study_s']} s each, {result['history_months']} lake months per symbol), "
        "machines of 2 workers:",
        "",
        "| machines | studies per machine | training h | lake h | total h |",
        "|---|---|---|---|---|",
        *(
            f"| {r['machines']} | {r['studies_per_machine']} | {r['training_h']} | {r['lake_h']} | {r['total_h']} |"
            for r in result["projection"]
        ),
        END,
    ]
    return "\n".join(lines)


def write_doc(table: str) -> None:
    text = DOC.read_text() if DOC.exists() else ""
    if BEGIN in text:
        text = re.sub(f"{re.escape(BEGIN)}.*?{re.escape(END)}", lambda _: table, text, flags=re.S)
    else:
        text = f"{text.rstrip()}\n\n{table}\n"
    DOC.write_text(text)


def main() -> None:
    args = arguments()
    if args.lake_symbol:
        lake_symbol(args.lake_symbol, args.months)
        return
    from itff_platform.defs.partitions import lake_partitions
    from itff_platform.models.registry import spec
    from itff_platform.settings import Settings
    from itff_platform.training.train import families_for

    print(f"load average before: {load()}", flush=True)
    optuna_ = study_runs(args.family, args.trials)
    lake = lake_runs(args.months)
    settings = Settings()
    # Searched families only: a baseline's single trial costs next to nothing.
    searched = [f for t in settings.training.targets for f in families_for(t, settings) if not spec(f).baseline]
    studies_per_pair = round(len(searched) / len(settings.training.targets))
    history = len(lake_partitions(settings).get_partitions_def_for_dimension("month").get_partition_keys())
    result = {
        "machine": f"{platform.node()} | {os.cpu_count()} CPUs | {platform.machine()} | Python {sys.version.split()[0]}",
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "load_average": load(),
        "family": args.family,
        "months": args.months,
        "history_months": history,
        "optuna": {str(k): v for k, v in optuna_.items()},
        "lake": {str(k): v for k, v in lake.items()},
        "speedups": {
            "trials": round(optuna_[2]["trials_per_minute"] / optuna_[1]["trials_per_minute"], 2),
            "study": round(optuna_[1]["study_s"] / optuna_[2]["study_s"], 2),
            "partitions": round(lake[2]["partitions_per_minute"] / lake[1]["partitions_per_minute"], 2),
        },
        "studies_per_pair": studies_per_pair,
        "executor": "dagster-celery (Redis broker, Postgres instance), one runner process per symbol",
    }
    result["projection"] = projection(
        optuna_[2]["study_s"], studies_per_pair, lake[2]["partitions_per_minute"], history
    )
    out = ROOT / "benchmarks" / "results" / "cluster.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    table = markdown(result)
    write_doc(table)
    print(f"\nspeedups from the second worker: {result['speedups']} (load average {result['load_average']})")
    print(table)


if __name__ == "__main__":
    main()
