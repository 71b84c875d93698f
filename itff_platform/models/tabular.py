"""scikit-learn families: logistic regression, gradient-boosted trees, and quantile regressors."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.linear_model import LogisticRegression, Ridge

from itff_platform.models.base import Forecaster, clip_probability, single_class_rate
from itff_platform.models.sklearn_predict import positive_probability, regression

if TYPE_CHECKING:
    from optuna import Trial

QUANTILES = (0.1, 0.5, 0.9)


def tree_space(trial: Trial) -> dict[str, Any]:
    """The tree-shape search space both gradient-boosting families share."""
    return {
        "learning_rate": trial.suggest_float("learning_rate", 0.02, 0.2, log=True),
        "max_leaf_nodes": trial.suggest_int("max_leaf_nodes", 7, 31),
        "min_samples_leaf": trial.suggest_int("min_samples_leaf", 50, 400, log=True),
    }


class SklearnClassifier(Forecaster):
    """Shared by the scikit-learn classifiers: scale on the training rows, fit, predict P(1); a training window
    holding a single class cannot be fitted, so it predicts that class's rate instead."""

    def make_estimator(self) -> Any:
        raise NotImplementedError

    def fit(self, features: np.ndarray, labels: np.ndarray, sample_weight: np.ndarray | None = None) -> Forecaster:
        scaled, self.constant = self.fit_scaler(features), single_class_rate(labels)
        self.model = (
            None
            if self.constant is not None
            else self.make_estimator().fit(scaled, labels, sample_weight=sample_weight)
        )
        return self

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        if self.model is None:
            return clip_probability(np.full(len(features), self.constant))
        return clip_probability(positive_probability(self.model, self.scale(features)))


class LogisticForecaster(SklearnClassifier):
    family = "logistic"

    @classmethod
    def search_space(cls, trial: Trial) -> dict[str, Any]:
        return {"C": trial.suggest_float("C", 1e-3, 10.0, log=True)}

    def make_estimator(self) -> Any:
        return LogisticRegression(C=self.params.get("C", 1.0), max_iter=500)


class BoostingForecaster(SklearnClassifier):
    family = "boosting"
    complexity = 3

    @classmethod
    def search_space(cls, trial: Trial) -> dict[str, Any]:
        return {
            **tree_space(trial),
            "l2_regularization": trial.suggest_float("l2_regularization", 1e-3, 10.0, log=True),
        }

    def make_estimator(self) -> Any:
        # Early stopping on an internal split would sample validation rows at random, i.e. from the future
        # of other training rows; a fixed iteration count keeps the training window strictly causal.
        return HistGradientBoostingClassifier(max_iter=150, early_stopping=False, random_state=self.seed, **self.params)


class BoostingQuantileForecaster(Forecaster):
    """P10/P50/P90 of the forward return, one gradient-boosted model per quantile."""

    family = "boosting_quantile"
    task = "regression"
    complexity = 3

    @classmethod
    def search_space(cls, trial: Trial) -> dict[str, Any]:
        return tree_space(trial)

    # Quantile trees with scikit-learn's default 20-row leaves overfit the tails: bands came out too narrow.
    DEFAULTS: ClassVar[dict[str, float | int]] = {"learning_rate": 0.05, "max_leaf_nodes": 15, "min_samples_leaf": 200}

    def fit(self, features: np.ndarray, labels: np.ndarray, sample_weight: np.ndarray | None = None) -> Forecaster:
        scaled = self.fit_scaler(features)
        params = {**self.DEFAULTS, **self.params}
        self.models = [
            HistGradientBoostingRegressor(
                loss="quantile", quantile=q, max_iter=100, early_stopping=False, random_state=self.seed, **params
            ).fit(scaled, labels, sample_weight=sample_weight)
            for q in QUANTILES
        ]
        return self

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        scaled = self.scale(features)
        return np.sort(np.column_stack([regression(m, scaled) for m in self.models]), axis=1)  # no crossing bands


class LinearQuantileForecaster(Forecaster):
    """Ridge regression for the median; the bands are the training residuals' 10th and 90th percentiles."""

    family = "linear_quantile"
    task = "regression"

    @classmethod
    def search_space(cls, trial: Trial) -> dict[str, Any]:
        return {"alpha": trial.suggest_float("alpha", 1e-2, 1e3, log=True)}

    def fit(self, features: np.ndarray, labels: np.ndarray, sample_weight: np.ndarray | None = None) -> Forecaster:
        scaled = self.fit_scaler(features)
        self.model = Ridge(alpha=self.params.get("alpha", 1.0)).fit(scaled, labels, sample_weight=sample_weight)
        residuals = labels - self.model.predict(scaled)
        self.offsets = np.quantile(residuals, QUANTILES)
        return self

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        median = regression(self.model, self.scale(features))
        bands: np.ndarray = median[:, None] + self.offsets[None, :]
        return bands
