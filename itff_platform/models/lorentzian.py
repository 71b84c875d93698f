"""Lorentzian-distance k-NN, the idea behind TradingView's "Lorentzian Classification".

distance(x, y) = sum_i log(1 + |x_i - y_i|): heavy-tailed, so one extreme feature cannot dominate the way it
does under Euclidean distance. History is sampled every `stride` bars, and the k nearest vote, weighted.
Vectorised over blocks of query rows: no Python loop over bars."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from itff_platform.models.base import Forecaster, clip_probability

if TYPE_CHECKING:
    from optuna import Trial

BLOCK_ROWS = 256


def lorentzian_distances(queries: np.ndarray, history: np.ndarray) -> np.ndarray:
    distances: np.ndarray = np.log1p(np.abs(queries[:, None, :] - history[None, :, :])).sum(axis=2)
    return distances


class LorentzianKNNForecaster(Forecaster):
    family = "lorentzian"
    complexity = 2

    @classmethod
    def search_space(cls, trial: Trial) -> dict[str, Any]:
        return {
            "neighbours": trial.suggest_int("neighbours", 8, 64, log=True),
            "stride": trial.suggest_categorical("stride", [2, 4, 8]),
            "max_history": trial.suggest_categorical("max_history", [1000, 2000, 4000]),
        }

    def fit(self, features: np.ndarray, labels: np.ndarray, sample_weight: np.ndarray | None = None) -> Forecaster:
        stride, max_history = self.params.get("stride", 4), self.params.get("max_history", 5000)
        scaled = self.fit_scaler(features)
        # The most recent bars, every `stride`-th, counting back from the end of the training window.
        picked = np.arange(len(scaled) - 1, -1, -stride)[:max_history][::-1]
        self.history = scaled[picked]
        self.labels = labels[picked].astype(np.float32)
        self.weights = (sample_weight[picked] if sample_weight is not None else np.ones(len(picked))).astype(np.float32)
        return self

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        queries = self.scale(features)
        k = min(self.params.get("neighbours", 16), len(self.history))
        out = np.empty(len(queries))
        for start in range(0, len(queries), BLOCK_ROWS):
            distances = lorentzian_distances(queries[start : start + BLOCK_ROWS], self.history)
            nearest = np.argpartition(distances, k - 1, axis=1)[:, :k]
            w, y = self.weights[nearest], self.labels[nearest]
            out[start : start + BLOCK_ROWS] = ((w * y).sum(axis=1) + 1) / (w.sum(axis=1) + 2)  # Laplace-smoothed vote
        return clip_probability(out)
