"""Where a study's time goes, per model family, and what pruning saves, on the packaged sample (BTCUSDT 1h, 30k
rows, 4 walk-forward folds: 3 searched, 1 holdout).

    make bench-training
    ITFF_TRIALS=6 ITFF_TORCH_TRIALS=4 make bench-training
    python benchmarks/bench_training.py --families logistic,lstm --pruners none,median,fold_mean

Each family's study runs once per pruner on the same seed. The sampler's first trials are seeded random draws,
so every pruner tries the same configurations at the default budget: pruning can only save time, or lose the best
trial by stopping it early. "best" is the study's objective (the best trial's mean search-fold loss); it counts as
equal to the unpruned study's within BEST_TOLERANCE. Results go to benchmarks/results/training.json."""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from itff_platform.features.silver import build_features
from itff_platform.market.sample import SampleCandleSource
from itff_platform.reporting import console_tables
from itff_platform.settings import Settings
from itff_platform.training.dataset import training_data
from itff_platform.training.study import run_study
from itff_platform.training.threads import threads_per_trial
from itff_platform.training.timing import PHASES
from itff_platform.training.train import folds_for

ROOT = Path(__file__).resolve().parents[1]
BEST_TOLERANCE = 1e-6  # log loss / pinball loss: same configuration, same folds, same seed give the same loss


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", help="comma-separated (default: every family the settings train)")
    parser.add_argument(
        "--pruners", default="none,fold_mean", help="comma-separated, of none, median (as before), fold_mean"
    )
    return parser.parse_args()


def prune_tests(run_id: str) -> str:
    """The fold_mean tests of a study's trials (training.pruning), read back from their MLflow runs: for each
    trial that fell behind the leader, the p-value after each fold it was tested on ("t2 f0 p=0.28")."""
    import mlflow

    client = mlflow.MlflowClient()
    runs = mlflow.search_runs(
        search_all_experiments=True, filter_string=f"tags.mlflow.parentRunId = '{run_id}'", output_format="list"
    )
    tests = []
    for run in sorted(runs, key=lambda r: int(r.info.run_name.split("-")[-1])):
        number = int(run.info.run_name.split("-")[-1]) + 1  # as the progress lines number trials
        for metric in client.get_metric_history(run.info.run_id, "prune_p_value"):
            tests.append(f"t{number} f{metric.step} p={metric.value:.3g}")
    return ", ".join(tests)


def study_row(outcome, target: str, pruner: str) -> dict:
    phases, cpu = outcome.phases or {}, outcome.cpu_phases or {}
    return {
        "family": outcome.family,
        "target": target,
        "pruner": pruner,
        "trials": outcome.trials_completed + outcome.trials_pruned,
        "pruned": outcome.trials_pruned,
        "study_s": round(outcome.seconds, 1),
        **{f"{phase}_s": round(phases.get(phase, 0.0), 1) for phase in PHASES},
        # This process's CPU seconds: less moved by other processes' load than the wall seconds.
        "study_cpu_s": round(cpu.get("study", 0.0), 1),
        "search_cpu_s": round(cpu.get("search", 0.0), 1),
        # The least any between-fold pruner could have spent on this study's trials (training.pruning).
        "search_floor_s": round(outcome.search_floor or 0.0, 1),
        # Whether the best trial also led on the first fold, so that floor was reachable at the same best score.
        "floor_keeps_best": outcome.floor_keeps_best,
        "best": round(outcome.metrics["best_search_loss"], 6),
        # fold_mean's significance tests: which trials it tested after which fold, at which p-value.
        "prune_tests": prune_tests(outcome.run_id) if pruner == "fold_mean" else "",
    }


def trials_to_halve(unpruned: dict) -> int | None:
    """The smallest trial budget at which a pruner stopping every trial but the best after its first fold would
    halve this family's study, with trials like the unpruned study's: each trial costs T seconds, f0 of it on the
    first fold, and the rest of the study (holdout, evaluation, refit, registration) O. Pruned, n trials cost
    n·f0·T + (1 - f0)·T + O against n·T + O unpruned: half when n >= (2(1 - f0)·T + O) / ((1 - 2·f0)·T).
    None when it never halves (a first fold costing half a trial or more, as with equal folds it nearly does)."""
    n, search, floor = unpruned["trials"], unpruned["search_s"], unpruned["search_floor_s"]
    if n < 2 or search <= 0:
        return None
    trial = search / n
    f0 = 1 - (search - floor) / ((n - 1) * trial)  # the floor saved (1 - f0)·T on each of the n - 1 others
    rest = unpruned["study_s"] - search
    if f0 >= 0.5:
        return None
    return max(n, math.ceil((2 * (1 - f0) * trial + rest) / ((1 - 2 * f0) * trial) - 1e-9))


def compared(rows: list[dict], reference: str = "none") -> list[dict]:
    """Each pruned study beside the unpruned one of its family: time ratios (wall and CPU) and whether the best
    score held. `floor_ratio` is the study ratio had every unpruned trial but the best stopped after its first fold:
    the most any pruner that stops trials between folds could save on these trials at this budget."""
    base = {(r["family"], r["target"]): r for r in rows if r["pruner"] == reference}
    out = []
    for row in rows:
        ref = base.get((row["family"], row["target"]))
        if row["pruner"] == reference or ref is None:
            continue
        out.append(
            {
                "family": row["family"],
                "pruner": row["pruner"],
                "pruned": f"{row['pruned']} of {row['trials']}",
                "search_s": f"{ref['search_s']} -> {row['search_s']}",
                "search_ratio": round(row["search_s"] / max(ref["search_s"], 1e-9), 2),
                "study_s": f"{ref['study_s']} -> {row['study_s']}",
                "study_ratio": round(row["study_s"] / max(ref["study_s"], 1e-9), 2),
                "cpu_ratio": round(row["study_cpu_s"] / max(ref["study_cpu_s"], 1e-9), 2),
                "floor_ratio": round(
                    (ref["study_s"] - ref["search_s"] + ref["search_floor_s"]) / max(ref["study_s"], 1e-9), 2
                ),
                "floor_keeps_best": ref["floor_keeps_best"],
                "trials_to_halve": trials_to_halve(ref),
                "best": f"{ref['best']:.6f} -> {row['best']:.6f}",
                "best_equal": abs(row["best"] - ref["best"]) <= BEST_TOLERANCE,
                "prune_tests": row["prune_tests"],
                "same_trials": row["trials"] == ref["trials"],  # else the comparison says nothing
            }
        )
    return out


def main() -> None:
    args = arguments()
    pruners = args.pruners.split(",")
    with tempfile.TemporaryDirectory() as scratch:
        # No wall-clock cut-off: a study the timeout stops early (on a loaded machine) would be compared with a
        # twin that ran more trials; each study runs its whole trial budget.
        settings = Settings(mlflow_dir=Path(scratch) / "mlflow", study_timeout_s=24 * 3600)
        chosen = args.families.split(",") if args.families else None
        candles = SampleCandleSource().fetch(
            "BTCUSDT", "1h", datetime(2021, 1, 1, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC)
        )
        silver = build_features(candles.filter(pl.col("volume") > 0), settings).collect()
        rows = []
        for target, families in (
            ("direction", settings.training.families),
            ("forward_return", settings.training.regression_families),
        ):
            families = [f for f in families if chosen is None or f in chosen]
            if not families:
                continue
            data = training_data(settings, "BTCUSDT", target, silver=silver)
            folds = folds_for(data, settings)
            # Not measured: the first study of a process pays for imports and MLflow's first registration.
            run_study(data, families[0], folds, settings, lambda _: None, n_trials=1)
            for family in families:
                for pruner in pruners:
                    outcome = run_study(data, family, folds, settings.model_copy(update={"pruner": pruner}), print)
                    rows.append(study_row(outcome, target, pruner))
                    print(rows[-1], flush=True)
    result = {
        "machine": f"{platform.node()} | {os.cpu_count()} CPUs | {platform.machine()} | Python {sys.version.split()[0]}",
        "load_average": os.getloadavg(),
        "threads_per_trial": threads_per_trial(settings),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset (OpenMP's default: spin, then sleep)"),
        "rows": len(silver),
        "folds": settings.training.wf_folds,
        "trials": settings.training.trials,
        "torch_trials": settings.training.torch_trials,
        "torch_epochs": settings.training.torch_epochs,
        "torch_max_train_rows": settings.training.torch_max_train_rows,
        "best_tolerance": BEST_TOLERANCE,
        "studies": rows,
        "pruning": compared(rows),
    }
    out = ROOT / "benchmarks" / "results" / "training.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    with console_tables(rows=100):
        print("\nStudies (seconds per phase: training.timing):")
        print(pl.DataFrame(rows))
        if result["pruning"]:
            print(f"\nPruned vs unpruned, same seed (best equal within {BEST_TOLERANCE:g}):")
            print(pl.DataFrame(result["pruning"]))
    print(
        f"\nload average {result['load_average']}, {result['threads_per_trial']} thread(s) per trial (BLAS 1), "
        f"OMP_WAIT_POLICY {result['omp_wait_policy']}"
    )


if __name__ == "__main__":
    main()
