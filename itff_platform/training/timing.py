"""Where a study's time goes: wall and CPU seconds per phase (search, holdout, evaluation, refit, registration)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

PHASES = ("setup", "search", "holdout", "evaluation", "refit", "registration")


class PhaseClock:
    """Wall seconds per phase, and this process's CPU seconds (all its threads) per phase: on a shared machine the
    wall time says as much about the load as about the work, the CPU time much less. A phase entered inside another
    (the refit inside registration) is charged to itself only, so the phases add up to the study's time instead of
    counting the refit twice. Time outside every phase goes to `default` when given, so the phases add up to the
    whole study whatever the load (opening the experiment and the parent run is setup too)."""

    def __init__(self, default: str | None = None) -> None:
        self.default = default
        self.started = self._mark = time.perf_counter()
        self._cpu_started = self._cpu_mark = time.process_time()
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}
        self._open: list[str] = []

    def _charge(self) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        name = self._open[-1] if self._open else self.default
        if name is not None:
            self.seconds[name] = self.seconds.get(name, 0.0) + now - self._mark
            self.cpu_seconds[name] = self.cpu_seconds.get(name, 0.0) + cpu - self._cpu_mark
        self._mark, self._cpu_mark = now, cpu

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        self._charge()
        self._open.append(name)
        try:
            yield
        finally:
            self._charge()
            self._open.pop()

    @property
    def total(self) -> float:
        return time.perf_counter() - self.started

    @property
    def cpu_total(self) -> float:
        return time.process_time() - self._cpu_started

    def metrics(self) -> dict[str, float]:
        """`study_seconds` (the whole study) and `<phase>_seconds` for each phase it went through, for MLflow."""
        self._charge()  # the time since the last phase, to the default phase
        return {"study_seconds": self.total, **{f"{name}_seconds": s for name, s in self.seconds.items()}}


def phases_of(metrics: dict[str, float]) -> dict[str, float]:
    """The phase seconds a study logged (read back from MLflow for a reused study), in PHASES order."""
    return {name: metrics[f"{name}_seconds"] for name in PHASES if f"{name}_seconds" in metrics}
