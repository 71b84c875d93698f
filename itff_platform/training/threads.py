"""How many threads a study's numeric work may use, and setting it only while the study runs.

torch's intra-op pool and the BLAS/OpenMP pools (scikit-learn's gradient boosting) each start one thread per core.
That is right for one trial at a time, and oversubscribes the cores when Optuna runs trials in parallel threads
(`study_jobs`) or worker processes (`study_workers`), or Dagster runs training runs side by side: two trials of two
threads each on two cores spend their time switching. So each trial gets the cores this process may run on, divided among everything that runs at once.
These pools are process-wide, so the limit is set around the study and put back after it, never at import. OpenMP's
limit is the exception: libgomp's omp_set_num_threads sets the calling thread's, and a thread started later begins
with every core, so each trial sets it again in its own thread (`trial_threads`): Optuna runs `study_jobs` trials in
a thread pool, where the study's limit never reached their gradient-boosting fits.

The BLAS pool (OpenBLAS: numpy's matrix products, scikit-learn's logistic and ridge regression) gets one thread
whatever the cores: on these matrices (30k rows x 24 features) a second thread makes a product about 1.5x faster
when both cores are free, and about 80x slower when another process holds one of them (OpenBLAS's threads spin
waiting for each other: 0.07 ms against 8 ms per product, measured with the process pinned to one core), which
made a logistic fit 2.2 s instead of 0.13 s on the shared machine. OpenMP (gradient boosting) and torch slow down
gracefully in the same case (1.3x), so they keep every core their trial is given."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from itff_platform.settings import Settings


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container or taskset narrows)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_per_trial(settings: Settings, parallel_runs: int = 1) -> int:
    """`torch_threads` when set, else the available cores shared among the trials run at once (`study_jobs` in
    each of `study_workers` processes) and the training runs that may run beside this one (`parallel_runs`, from
    Dagster's run queue)."""
    if settings.training.torch_threads:
        return settings.training.torch_threads
    at_once = settings.training.study_jobs * settings.training.study_workers * max(1, parallel_runs)
    return max(1, available_cores() // at_once)


def pool_limits(threads: int) -> dict[str, int]:
    """Threads per threadpoolctl pool (by its user API) for a trial given `threads`: BLAS always one."""
    return {"openmp": threads, "blas": 1}


@contextmanager
def trial_threads(threads: int) -> Iterator[None]:
    """The OpenMP limit of study_threads inside the block, for the thread that enters it (a trial's thread)."""
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    with threadpool_limits(limits=pool_limits(threads)["openmp"], user_api="openmp"):
        yield


@contextmanager
def study_threads(threads: int, uses_torch: bool) -> Iterator[None]:
    """torch's intra-op threads (for a torch family) and the OpenMP pools limited to `threads` inside the block,
    the BLAS pools to one (pool_limits), and restored after it."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=pool_limits(threads)):
        if not uses_torch:
            yield
            return
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            yield
        finally:
            torch.set_num_threads(before)
