"""The model families, each declared once by its own module under `itff_platform.models.families`.

A family module calls `register(FamilySpec(...))` at import; `families()` imports every module in that package
once and answers from what they registered. Everything that used to know families by name (settings, training,
promotion, serving) asks here instead, so a new family is one file there plus its test
(docs/extend-model-family.md).

A spec names its Forecaster class as "module:Class" and the registry imports it only when asked for it: reading
the registry (settings validation does, in every process) must not import torch, which takes seconds."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from itff_platform.models.base import Forecaster

Task = Literal["classification", "regression"]


@dataclass(frozen=True)
class FamilySpec:
    name: str
    task: Task
    forecaster: str  # "package.module:Class", imported on first use
    baseline: bool = False  # a reference point: one trial, never calibrated, never registered for serving
    torch: bool = False  # needs torch (seconds to import); its trial budget is `torch_trials`
    # What `predict_with_uncertainty` adds beside the answer: MC-dropout spread, or nothing. Regression families
    # answer with P10/P50/P90 bands, which are their uncertainty.
    uncertainty: Literal["none", "mc_dropout", "bands"] = "none"
    # Fixed params taken from the training data's feature names rather than searched (e.g. a column index).
    data_params: Callable[[list[str]], dict[str, Any]] | None = None

    def fixed_params(self, features: list[str]) -> dict[str, Any]:
        return self.data_params(features) if self.data_params else {}

    @property
    def trials_setting(self) -> str | None:
        """The Settings field holding this family's trial budget; None for a baseline (nothing to search)."""
        if self.baseline:
            return None
        return "torch_trials" if self.torch else "trials"

    def forecaster_class(self) -> type[Forecaster]:
        module, _, name = self.forecaster.partition(":")
        forecaster: type[Forecaster] = getattr(importlib.import_module(module), name)
        return forecaster


_REGISTERED: dict[str, FamilySpec] = {}
_discovered = False


def register(*specs: FamilySpec) -> None:
    """Called by a family module at import. Registering a name twice with a different spec is a mistake."""
    for spec in specs:
        known = _REGISTERED.get(spec.name)
        if known is not None and known != spec:
            raise ValueError(f"family: {spec.name!r} is registered twice ({known.forecaster} and {spec.forecaster})")
        _REGISTERED[spec.name] = spec


def families() -> dict[str, FamilySpec]:
    """Every registered family by name, in the order their modules were found (module name order)."""
    global _discovered
    if not _discovered:
        from itff_platform.models import families as package

        for module in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            importlib.import_module(f"{package.__name__}.{module.name}")
        _discovered = True
    return dict(_REGISTERED)


def rediscover() -> None:
    """Look for family modules again on the next `families()` (a module added at run time, as the tests do)."""
    global _discovered
    _discovered = False


def spec(name: str) -> FamilySpec:
    known = families()
    if name not in known:
        raise ValueError(f"family: {name!r} is not one of {sorted(known)}")
    return known[name]


def names(task: Task, *, baseline: bool) -> list[str]:
    """The families of a task: the baselines, or the families a study searches."""
    return [s.name for s in families().values() if s.task == task and s.baseline == baseline]


def baselines() -> list[str]:
    """Every baseline family, of either task."""
    return [s.name for s in families().values() if s.baseline]


def check_families(chosen: list[str], task: Task, setting: str) -> list[str]:
    """Settings' validation: every chosen name is a registered, searchable family of `task`."""
    allowed = names(task, baseline=False)
    wrong = [name for name in chosen if name not in allowed]
    if wrong:
        raise ValueError(f"{setting}: {wrong} not among the registered {task} families {allowed}")
    return chosen
