"""What a second worker buys on this machine, and what N machines would take for the whole desk.

    make bench-cluster
    python benchmarks/bench_cluster.py --family boosting --trials 8 --months 6

1. Optuna: one study (the packaged sample, BTCUSDT 1h direction, the chosen family, pruning off so every run
   has the same budget) with study_workers 1, then 2: trials per minute over the search phase, and the whole
   study's wall time (setup, holdout, evaluation and registration stay in one process).
2. Executor: lake partitions (symbol x month: raw -> bronze -> silver, one Dagster run each) by 1, then 2 worker
   processes. STAND-IN until the dagster-celery workers of the cluster profile are in this tree: the workers are
   local processes each materializing whole partition runs, one symbol's months in order per task (a symbol's
   own lake folder, so two writers never commit to one local Delta table).

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
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from multiprocessing import get_context
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "scale-out-optuna.md"
BEGIN, END = "<!-- bench-cluster:begin -->", "<!-- bench-cluster:end -->"
DESK_SYMBOLS, MACHINES = 50, (1, 2, 4, 8, 16)


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default="boosting", help="the family of the measured study (default boosting)")
    parser.add_argument("--trials", type=int, default=8, help="the study's budget of trials (default 8)")
    parser.add_argument("--months", type=int, default=6, help="lake months per symbol (default 6, two symbols)")
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


def _warm() -> None:
    import itff_platform.definitions  # noqa: F401  the imports every partition run needs, paid before the clock


def _lake_symbol(task: tuple[str, list[str], str]) -> int:
    """One symbol's partitions, month by month (silver reads the months before), in its own lake folder."""
    from dagster import DagsterInstance, MultiPartitionKey, materialize

    from itff_platform.definitions import lake
    from itff_platform.defs.resources import ItffSettingsResource

    symbol, months, lake_dir = task
    instance = DagsterInstance.ephemeral()
    for month in months:
        result = materialize(
            lake,
            partition_key=MultiPartitionKey({"symbol": symbol, "month": month}),
            instance=instance,
            resources={"itff": ItffSettingsResource(lake_dir=lake_dir)},
            run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},  # not every step's events
        )
        assert result.success, f"{symbol} {month}"
    return len(months)


def lake_runs(months: int) -> dict[int, dict]:
    from itff_platform.defs.partitions import lake_partitions
    from itff_platform.settings import Settings

    settings = Settings()
    chosen = sorted(lake_partitions(settings).get_partitions_def_for_dimension("month").get_partition_keys())
    measured = {}
    for workers in (1, 2):
        with tempfile.TemporaryDirectory() as scratch:
            tasks = [(symbol, chosen[:months], f"{scratch}/{symbol}") for symbol in settings.symbols]
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_warm) as pool:
                list(pool.map(time.sleep, [0.1] * workers))  # every worker started and warm before the clock
                started = time.perf_counter()
                partitions = sum(pool.map(_lake_symbol, tasks))
                seconds = time.perf_counter() - started
        measured[workers] = {
            "partitions": partitions,
            "seconds": round(seconds, 2),
            "partitions_per_minute": round(partitions / seconds * 60, 2),
            "load_average": load(),
        }
        print(f"lake (stand-in executor), {workers} worker(s): {measured[workers]}", flush=True)
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
        f"| lake partitions/min (stand-in executor) | {lake['1']['partitions_per_minute']} | "
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
        "executor": "stand-in: local processes materializing partition runs (no dagster-celery in this tree)",
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
