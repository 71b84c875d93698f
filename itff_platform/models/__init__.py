"""Model families by name. Imports are lazy: torch takes seconds to import and only two families need it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from itff_platform.models.base import Forecaster
    from itff_platform.settings import Settings

CLASSIFIERS = ["logistic", "boosting", "lstm", "transformer", "lorentzian"]
REGRESSORS = ["boosting_quantile", "linear_quantile"]
CLASSIFICATION_BASELINES = ["baseline_majority", "baseline_persistence"]
REGRESSION_BASELINES = ["baseline_climatology"]


def forecaster_class(family: str) -> "type[Forecaster]":
    if family in ("lstm", "transformer"):
        from itff_platform.models.sequence import LSTMForecaster, TransformerForecaster

        return {"lstm": LSTMForecaster, "transformer": TransformerForecaster}[family]
    from itff_platform.models.baselines import ClimatologyForecaster, MajorityForecaster, PersistenceForecaster
    from itff_platform.models.lorentzian import LorentzianKNNForecaster
    from itff_platform.models.tabular import (
        BoostingForecaster,
        BoostingQuantileForecaster,
        LinearQuantileForecaster,
        LogisticForecaster,
    )

    classes = {
        c.family: c
        for c in (LogisticForecaster, BoostingForecaster, LorentzianKNNForecaster, BoostingQuantileForecaster,
                  LinearQuantileForecaster, MajorityForecaster, PersistenceForecaster, ClimatologyForecaster)
    }
    if family not in classes:
        raise ValueError(f"family: {family!r} is not one of {sorted([*classes, 'lstm', 'transformer'])}")
    return classes[family]


def is_baseline(family: str) -> bool:
    return family in CLASSIFICATION_BASELINES or family in REGRESSION_BASELINES


def make_forecaster(family: str, params: dict, settings: "Settings") -> "Forecaster":
    """The family's forecaster as it is trained and deployed: calibrated on the end of its training window
    (Platt for probabilities, conformal for bands), except the baselines, which are reference points."""
    from itff_platform.models.calibration import Calibrated

    cls = forecaster_class(family)
    if family in ("lstm", "transformer"):
        model = cls(params, settings.training.seed, length=settings.training.sequence_length, epochs=settings.training.torch_epochs,
                    device=settings.training.torch_device, mc_samples=settings.training.mc_dropout_samples,
                    max_train_rows=settings.training.torch_max_train_rows)
    else:
        model = cls(params, settings.training.seed)
    if is_baseline(family) or not settings.training.calibration_rows:
        return model
    return Calibrated(model, slice_rows=settings.training.calibration_rows, horizon=settings.features.label_horizon)


def load_forecaster(folder, settings: "Settings | None" = None) -> "Forecaster":
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
