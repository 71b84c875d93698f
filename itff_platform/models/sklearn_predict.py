"""scikit-learn's own prediction arithmetic for the fitted estimators the tabular families hold, without its
per-call input checks, and with OpenMP left out of small inputs. The service scores one row (or a few) per call.

- `predict_proba`'s input checks (check_array, the dataframe and feature-name probes, check_is_fitted) cost
  ~150 us per estimator and call, several times what a 24-feature row costs to score. Here the input is always
  the Forecaster's own scaled float32 matrix, and the service refuses non-finite and out-of-range values before
  the model (serving.online: checked_rows, checked_model_input), so the checks never find anything. The feature
  count (the tree code reads columns by index without bounds checks) and finiteness are still checked.
- Gradient-boosted trees run an OpenMP parallel region per tree (150 per model) over the rows. For one row that
  is pure overhead: waking the pool 150 times cost 11-58 ms of CPU per row on this shared 2-core machine, against
  ~1.4 ms on one thread. Each row is scored by one thread whatever the pool size, so the bits do not depend on it.

Every function computes what scikit-learn's public method computes, in the same operations on the same dtypes, so
the output is the same to the bit: itff_platform_tests/models/test_sklearn_predict.py pins that against the
public methods for every family, and scikit-learn is pinned to one version in pyproject.toml. Anything outside
what these functions were written for (categorical features, multiclass, sparse) goes through the public method."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import expit
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
from sklearn.linear_model import LogisticRegression, Ridge

# Fewer rows than this are scored on one OpenMP thread; more (an evaluation fold) on the pool, as before.
SERIAL_ROWS = 1000


def _checked(estimator: Any, x: np.ndarray, finite: bool = True) -> np.ndarray:
    """The checks of scikit-learn's that can fail here: the feature count, and (linear models; trees route NaN to
    a branch) finiteness, which costs ~1 us on a row and keeps a NaN from the pyfunc or a replay an error."""
    if x.ndim != 2 or x.shape[1] != estimator.n_features_in_:
        raise ValueError(
            f"X has shape {x.shape}; {type(estimator).__name__} expects {estimator.n_features_in_} features"
        )
    if finite and not np.isfinite(x).all():
        raise ValueError("Input X contains NaN or infinity.")
    return x


def positive_probability(estimator: Any, x: np.ndarray) -> np.ndarray:
    """estimator.predict_proba(x)[:, 1] for a fitted binary classifier."""
    if type(estimator) is LogisticRegression and estimator.coef_.shape[0] == 1:
        # decision_function (safe_sparse_dot is `@` on dense arrays), then _predict_proba_lr's expit.
        scores = _checked(estimator, x) @ estimator.coef_.T + estimator.intercept_
        probability: np.ndarray = expit(scores.reshape(-1))
        return probability
    if type(estimator) is HistGradientBoostingClassifier and estimator.n_trees_per_iteration_ == 1:
        return np.asarray(estimator._loss.predict_proba(tree_raw_predictions(estimator, x))[:, 1])
    return np.asarray(estimator.predict_proba(x)[:, 1])


def regression(estimator: Any, x: np.ndarray) -> np.ndarray:
    """estimator.predict(x) for a fitted single-target regressor."""
    if type(estimator) is Ridge and estimator.coef_.ndim == 1:
        prediction: np.ndarray = _checked(estimator, x) @ estimator.coef_ + estimator.intercept_
        return prediction
    if type(estimator) is HistGradientBoostingRegressor:
        return np.asarray(estimator._loss.link.inverse(tree_raw_predictions(estimator, x).ravel()))
    return np.asarray(estimator.predict(x))


def tree_raw_predictions(estimator: Any, x: np.ndarray) -> np.ndarray:
    """The estimator's _raw_predict(x): its baseline plus every tree's leaf value, summed in the same order."""
    n_threads = 1 if len(x) < SERIAL_ROWS else None  # None: the pool's size, as scikit-learn chooses it
    if estimator._preprocessor is not None:  # categorical features: scikit-learn's own encoding path
        raw: np.ndarray = estimator._raw_predict(x, n_threads=n_threads)
        return raw
    from sklearn.utils._openmp_helpers import _openmp_effective_n_threads

    # _preprocess_X's validation converts to float64 (X_DTYPE), keeping the order: exact for float32 values.
    numeric = np.asarray(_checked(estimator, x, finite=False), dtype=np.float64)
    raw = np.zeros(
        (len(numeric), estimator.n_trees_per_iteration_), dtype=estimator._baseline_prediction.dtype, order="F"
    )
    raw += estimator._baseline_prediction
    estimator._predict_iterations(numeric, estimator._predictors, raw, False, _openmp_effective_n_threads(n_threads))
    return raw


def public_output(forecaster: Any, x: np.ndarray) -> np.ndarray:
    """What a tabular family's predict_proba gave through scikit-learn's public methods, calibration included: the
    reference the functions above must equal to the bit (their test), and the 'before' of benchmarks/bench_model_call.py."""
    from itff_platform.models.base import clip_probability
    from itff_platform.models.calibration import Calibrated, apply_calibration

    base: Any = forecaster.base if isinstance(forecaster, Calibrated) else forecaster
    scaled = base.scale(x)
    if base.family in ("logistic", "boosting"):
        raw = clip_probability(base.model.predict_proba(scaled)[:, 1])
    elif base.family == "boosting_quantile":
        raw = np.sort(np.column_stack([m.predict(scaled) for m in base.models]), axis=1)
    elif base.family == "linear_quantile":
        raw = base.model.predict(scaled)[:, None] + base.offsets[None, :]
    else:
        raise ValueError(f"{base.family}: not a scikit-learn family")
    return apply_calibration(forecaster.calibration, raw) if isinstance(forecaster, Calibrated) else raw
