"""One interface for every model family: fit on a training window (with sample weights), predict, save, load,
and declare an Optuna search space. Scalers are fitted inside `fit`, on the training rows only."""

from __future__ import annotations

import json
import pickle
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np
from sklearn.preprocessing import StandardScaler

if TYPE_CHECKING:
    from optuna import Trial

    from itff_platform.settings import Settings


class ServedForecaster(Protocol):
    """What serving and replay call on a loaded model: a Forecaster, or the Calibrated one wrapping it."""

    @property
    def family(self) -> str: ...

    @property
    def context_rows(self) -> int: ...

    @property
    def scaler(self) -> StandardScaler | None: ...

    def scale(self, features: np.ndarray) -> np.ndarray: ...

    def predict_proba(self, features: np.ndarray) -> np.ndarray: ...

    def predict_with_uncertainty(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]: ...


class Forecaster(ABC):
    family: ClassVar[str]
    task: ClassVar[str] = "classification"  # or "regression" (quantile bands)
    # Rows of history a prediction needs before the row itself (sequence models look back).
    context_rows: int = 0
    # How much a family can fit, in rank order: promotion prefers the simpler of families within noise of
    # each other (1 linear, 2 neighbours, 3 trees, 4 recurrent, 5 attention).
    complexity: ClassVar[int] = 1

    def __init__(self, params: dict[str, Any] | None = None, seed: int = 42) -> None:
        self.params = dict(params or {})
        self.seed = seed
        self.scaler: StandardScaler | None = None

    @classmethod
    def from_settings(cls, params: dict[str, Any], settings: Settings) -> Forecaster:
        """A fresh model with these hyperparameters; a family that reads more settings overrides this."""
        return cls(params, settings.training.seed)

    @classmethod
    def search_space(cls, trial: Trial) -> dict[str, Any]:
        return {}

    def fit_scaler(self, features: np.ndarray) -> np.ndarray:
        """Fit the scaler on these (training) rows only, and return them scaled."""
        self.scaler = StandardScaler().fit(features)
        return self.scale(features)

    def scale(self, features: np.ndarray) -> np.ndarray:
        if self.scaler is None:
            raise RuntimeError(f"{self.family}: predict called before fit")
        # StandardScaler.transform's arithmetic without its input validation, which costs ~120 us a call:
        # the service scales one row per request.
        scaled: np.ndarray = ((np.asarray(features, dtype=np.float64) - self.scaler.mean_) / self.scaler.scale_).astype(
            np.float32
        )
        return scaled

    @abstractmethod
    def fit(self, features: np.ndarray, labels: np.ndarray, sample_weight: np.ndarray | None = None) -> Forecaster: ...

    @abstractmethod
    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """P(label = 1) per row (classification), or an (n, 3) array of P10/P50/P90 (regression)."""

    def probability_samples(self, features: np.ndarray) -> np.ndarray | None:
        """(samples, rows) stochastic probabilities (MC dropout), or None for a deterministic family."""
        return None

    def predict_with_uncertainty(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(probability, the spread of the stochastic samples or None). The probability is always
        `predict_proba`'s: what was evaluated, thresholded and promoted is what is served; the samples only
        say how unsure the model is."""
        samples = self.probability_samples(features)
        return self.predict_proba(features), None if samples is None else samples.std(axis=0)

    # --- persistence: params + pickled state; torch families override the state part
    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "forecaster.json").write_text(
            json.dumps({"family": self.family, "params": self.params, "seed": self.seed}, indent=2, default=str)
        )
        with open(folder / "state.pkl", "wb") as handle:
            pickle.dump(self._state(), handle)

    def _state(self) -> dict[str, Any]:
        return {"scaler": self.scaler, **{k: v for k, v in vars(self).items() if k not in ("params", "seed", "scaler")}}

    def _restore(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def single_class_rate(labels: np.ndarray) -> float | None:
    """The only label a training window holds, when it holds just one (a classifier cannot be fitted then)."""
    values = np.unique(labels)
    return float(values[0]) if len(values) == 1 else None


def clip_probability(p: np.ndarray) -> np.ndarray:
    clipped: np.ndarray = np.clip(p, 1e-6, 1 - 1e-6)
    return clipped


def balanced_weights(labels: np.ndarray) -> np.ndarray:
    """Weights that give each class the same total weight."""
    labels = labels.astype(int)
    counts = np.bincount(labels, minlength=2).astype(float)
    counts[counts == 0] = 1
    weights: np.ndarray = (len(labels) / (2 * counts))[labels]
    return weights
