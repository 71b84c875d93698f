"""Baselines evaluated beside every study: a model that cannot beat these has learned nothing."""

from __future__ import annotations

import numpy as np

from itff_platform.models.base import Forecaster, clip_probability


class MajorityForecaster(Forecaster):
    """Always the training base rate: the log loss of knowing only how often the label is 1."""

    family = "baseline_majority"

    def fit(self, features: np.ndarray, labels: np.ndarray, sample_weight: np.ndarray | None = None) -> Forecaster:
        self.rate = float(np.average(labels, weights=sample_weight))
        self.scaler = None
        return self

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        return clip_probability(np.full(len(features), self.rate))


class PersistenceForecaster(Forecaster):
    """The sign of the last return, as a calibrated probability: P(up | last bar up) and P(up | last bar down),
    both measured on the training window. Needs the column index of log_return_1."""

    family = "baseline_persistence"

    def fit(self, features: np.ndarray, labels: np.ndarray, sample_weight: np.ndarray | None = None) -> Forecaster:
        column = self.params["last_return_column"]
        up = features[:, column] > 0
        self.rate_after_up = float(labels[up].mean()) if up.any() else 0.5
        self.rate_after_down = float(labels[~up].mean()) if (~up).any() else 0.5
        return self

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        up = features[:, self.params["last_return_column"]] > 0
        return clip_probability(np.where(up, self.rate_after_up, self.rate_after_down))


class ClimatologyForecaster(Forecaster):
    """Regression baseline: the training window's own P10/P50/P90 of the forward return, for every row."""

    family = "baseline_climatology"
    task = "regression"

    def fit(self, features: np.ndarray, labels: np.ndarray, sample_weight: np.ndarray | None = None) -> Forecaster:
        self.bands = np.quantile(labels, (0.1, 0.5, 0.9))
        return self

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        return np.tile(self.bands, (len(features), 1))
