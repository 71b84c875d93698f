"""CPU per model call as the service makes it, per family: one row (/predict) and 8 rows (a batch the batcher
stacks), through LoadedModel.predict, against the same models scored through scikit-learn's public methods (what
the tabular families called before models/sklearn_predict.py). In-process, process time (every thread), so a busy
machine inflates it less than wall time; the OpenMP pool's CPU is counted too.

    PYTHONPATH=$PWD python benchmarks/bench_model_call.py [family ...]

Models are fitted here on synthetic rows of 24 features (the silver feature count), calibrated as trained."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

import numpy as np

from itff_platform.contracts.champions import LoadedModel
from itff_platform.models import make_forecaster
from itff_platform.models.sklearn_predict import public_output
from itff_platform.settings import Settings

FEATURES = 24
FAMILIES = ["logistic", "boosting", "boosting_quantile", "linear_quantile", "lorentzian"]
SECONDS = float(os.environ.get("ITFF_BENCH_SECONDS", "2"))  # CPU seconds per figure, at least 20 calls


def cpu_us_per_call(call: Callable[[], object]) -> float:
    for _ in range(5):
        call()
    calls, started = 0, time.process_time()
    while calls < 20 or time.process_time() - started < SECONDS:
        call()
        calls += 1
    return (time.process_time() - started) / calls * 1e6


def fitted(family: str) -> LoadedModel:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6000, FEATURES))
    signal = x[:, 0] + rng.normal(size=len(x))
    regression = family.endswith("quantile")
    model = make_forecaster(family, {}, Settings()).fit(x, signal * 0.01 if regression else (signal > 0).astype(float))
    task = "regression" if regression else "classification"
    return LoadedModel(f"itff-BENCH-{family}", "BENCH", "x", "1", family, {"task": task}, model)


def figures_of(model: LoadedModel, rows: np.ndarray) -> list[float]:
    """(public, served) CPU us for one row, then for all the rows."""
    figures = []
    for x in (rows[:1], rows):
        sklearn_family = model.family != "lorentzian"
        public = cpu_us_per_call(lambda x=x: public_output(model.forecaster, x)) if sklearn_family else float("nan")
        figures += [public, cpu_us_per_call(lambda x=x: model.predict(x))]
    return figures


def main(families: list[str]) -> None:
    rows = np.random.default_rng(1).normal(size=(8, FEATURES))
    print(f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; CPU us per call (process time, all threads)")
    print(f"{'family':18} {'1 row public':>13} {'1 row served':>13} {'8 rows public':>14} {'8 rows served':>14}")
    for family in families:
        figures = figures_of(fitted(family), rows)
        print(f"{family:18} {figures[0]:13.0f} {figures[1]:13.0f} {figures[2]:14.0f} {figures[3]:14.0f}")


if __name__ == "__main__":
    main(sys.argv[1:] or FAMILIES)
