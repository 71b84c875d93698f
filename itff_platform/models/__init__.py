"""Model families, as the registry (models.registry) declares them: build one for training, load a saved one.
Imports are lazy: torch takes seconds to import and only the torch families need it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from itff_platform.models.registry import spec

if TYPE_CHECKING:
    from pathlib import Path

    from itff_platform.models.base import Forecaster
    from itff_platform.settings import Settings


def forecaster_class(family: str) -> type[Forecaster]:
    """The family's Forecaster class; a ValueError naming the registered families for an unknown one."""
    return spec(family).forecaster_class()


def is_baseline(family: str) -> bool:
    """Whether a family is a reference point (majority, persistence, climatology) rather than a trained model."""
    return spec(family).baseline


def make_forecaster(family: str, params: dict[str, Any], settings: Settings) -> Forecaster:
    """The family's forecaster as it is trained and deployed: calibrated on the end of its training window
    (Platt for probabilities, conformal for bands), except the baselines, which are reference points."""
    from itff_platform.models.calibration import Calibrated

    model = forecaster_class(family).from_settings(params, settings)
    if is_baseline(family) or not settings.training.calibration_rows:
        return model
    return Calibrated(model, slice_rows=settings.training.calibration_rows, horizon=settings.features.label_horizon)


def load_forecaster(folder: str | Path, settings: Settings | None = None) -> Forecaster:
    """Rebuild a saved forecaster from its folder (forecaster.json + state.pkl)."""
    import json
    import pickle
    from pathlib import Path

    folder = Path(folder)
    meta = json.loads((folder / "forecaster.json").read_text())
    cls = forecaster_class(meta["family"])
    instance = cls.__new__(cls)
    instance.params, instance.seed = meta["params"], meta["seed"]
    with open(folder / "state.pkl", "rb") as handle:
        instance._restore(pickle.load(handle))
    from itff_platform.models.calibration import CALIBRATION_FILE, Calibrated

    return Calibrated.restore(instance, folder) if (folder / CALIBRATION_FILE).exists() else instance
