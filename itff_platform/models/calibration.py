"""Calibration inside the training window: a family's model is fitted on the training rows before a final
calibration slice, then recalibrated on its own out-of-sample predictions for that slice.

- Classifiers get Platt scaling, p' = sigmoid(a * logit(p) + b). Class weighting ("balanced") and k-NN votes
  skew probabilities by up to 0.15 in ECE; two parameters fitted on a couple of thousand rows undo that
  without the overfitting risk of isotonic steps.
- Quantile regressors get conformalised quantile regression (CQR, Romano et al. 2019): the P10..P90 band is
  widened (or narrowed) by the 80 % quantile of the conformity scores max(p10 - y, y - p90) on the slice,
  so the band's coverage is 80 % on rows the model never saw, whatever the trees learnt about the tails.

The slice is the most recent part of the training window, purged by the label horizon from the rows the model
learns on, so no label the model trained on reads into it. Nothing is ever fitted on a test fold: the
walk-forward evaluation wraps this whole procedure, calibration included."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from itff_platform.models.base import Forecaster, clip_probability

if TYPE_CHECKING:
    from sklearn.preprocessing import StandardScaler

CALIBRATION_FILE = "calibration.json"
BAND_QUANTILES = (0.1, 0.9)  # the band CQR conformalises: nominal 80 % coverage
PLATT_C = 1e6  # a large C: this is maximum likelihood on one feature, not a regularised model
SLICE_FRACTION = 0.25  # at most this share of the training window is held out: the model keeps most of its history
MIN_ROWS = 200  # fewer than this in the slice (or left to learn on) and Platt's two parameters would be noise


def logit(p: np.ndarray) -> np.ndarray:
    p = clip_probability(np.asarray(p, np.float64))
    log_odds: np.ndarray = np.log(p / (1 - p))
    return log_odds


def fit_platt(prob: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(labels)) < 2:
        return {"method": "identity"}
    fitted = LogisticRegression(C=PLATT_C, max_iter=1000).fit(logit(prob)[:, None], labels.astype(int))
    return {"method": "platt", "slope": float(fitted.coef_[0, 0]), "intercept": float(fitted.intercept_[0])}


def fit_conformal(bands: np.ndarray, actual: np.ndarray) -> dict[str, Any]:
    coverage = BAND_QUANTILES[1] - BAND_QUANTILES[0]
    scores = np.maximum(bands[:, 0] - actual, actual - bands[:, 2])
    level = min(1.0, np.ceil((len(scores) + 1) * coverage) / len(scores))  # the finite-sample conformal quantile
    return {"method": "conformal", "widen": float(np.quantile(scores, level, method="higher"))}


def apply_calibration(calibration: dict[str, Any], output: np.ndarray) -> np.ndarray:
    method = calibration["method"]
    if method == "platt":
        return clip_probability(1 / (1 + np.exp(-(calibration["slope"] * logit(output) + calibration["intercept"]))))
    if method == "conformal":
        widen = calibration["widen"]
        bands = output + np.array([-widen, 0.0, widen])
        return np.sort(bands, axis=1)  # a negative widening must not cross P10 over the median
    return output


class Calibrated(Forecaster):
    """A family's forecaster plus its calibration map. It answers as the family it wraps (family, task,
    context rows, scaler), so the service, the pyfunc and the evaluation need not know it is there."""

    def __init__(
        self,
        base: Forecaster,
        slice_rows: int = 2000,
        slice_fraction: float = SLICE_FRACTION,
        horizon: int = 0,
        min_rows: int = MIN_ROWS,
    ) -> None:
        self.base, self.slice_rows, self.slice_fraction, self.horizon, self.min_rows = (
            base,
            slice_rows,
            slice_fraction,
            horizon,
            min_rows,
        )
        self.calibration: dict[str, Any] = {"method": "identity"}

    # --- the wrapped family's identity
    @property
    def family(self) -> str:  # type: ignore[override]
        return self.base.family

    @property
    def task(self) -> str:  # type: ignore[override]
        return self.base.task

    @property
    def complexity(self) -> int:  # type: ignore[override]
        return self.base.complexity

    @property
    def params(self) -> dict[str, Any]:  # type: ignore[override]
        return self.base.params

    @property
    def seed(self) -> int:  # type: ignore[override]
        return self.base.seed

    @property
    def context_rows(self) -> int:  # type: ignore[override]
        return self.base.context_rows

    @property
    def scaler(self) -> StandardScaler | None:  # type: ignore[override]
        return self.base.scaler

    def scale(self, features: np.ndarray) -> np.ndarray:
        return self.base.scale(features)

    # --- fit and predict
    def fit(self, features: np.ndarray, labels: np.ndarray, sample_weight: np.ndarray | None = None) -> Forecaster:
        calibration_rows = min(self.slice_rows, int(len(labels) * self.slice_fraction))
        learn_end = len(labels) - calibration_rows - self.horizon  # purge: these labels would read into the slice
        if calibration_rows < self.min_rows or learn_end < self.min_rows:
            self.base.fit(features, labels, sample_weight)  # too little history to spare a slice: uncalibrated
            self.calibration = {"method": "identity", "reason": f"{len(labels)} training rows"}
            return self
        learn = slice(0, learn_end)
        self.base.fit(features[learn], labels[learn], None if sample_weight is None else sample_weight[learn])
        first = len(labels) - calibration_rows
        history = max(0, first - self.base.context_rows)  # sequence models read the bars before the slice
        raw = self.base.predict_proba(features[history:])[first - history :]
        held = labels[first:]
        self.calibration = fit_conformal(raw, held) if self.task == "regression" else fit_platt(raw, held)
        self.calibration["rows"] = int(calibration_rows)
        return self

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        return apply_calibration(self.calibration, self.base.predict_proba(features))

    def predict_both(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(before calibration, after), from one pass of the model."""
        raw = self.base.predict_proba(features)
        return raw, apply_calibration(self.calibration, raw)

    def probability_samples(self, features: np.ndarray) -> np.ndarray | None:
        samples = self.base.probability_samples(features)
        return None if samples is None else np.stack([apply_calibration(self.calibration, s) for s in samples])

    # --- persistence: the family's own files, plus the calibration map beside them
    def save(self, folder: Path) -> None:
        self.base.save(folder)
        (folder / CALIBRATION_FILE).write_text(json.dumps(self.calibration, indent=2))

    @classmethod
    def restore(cls, base: Forecaster, folder: Path) -> Calibrated:
        instance = cls(base)
        instance.calibration = json.loads((Path(folder) / CALIBRATION_FILE).read_text())
        return instance
