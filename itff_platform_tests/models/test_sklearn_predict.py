"""The tabular families score through models.sklearn_predict (scikit-learn's arithmetic without its per-call checks,
trees on one thread for small inputs). What they serve must be what scikit-learn's public methods give, to the bit:
the probability promotion judged is the probability the service answers with."""

import numpy as np
import pytest

from itff_platform.contracts.champions import LoadedModel
from itff_platform.models import make_forecaster
from itff_platform.models.sklearn_predict import SERIAL_ROWS, positive_probability, public_output, regression
from itff_platform.settings import Settings

FAMILIES = ["logistic", "boosting", "boosting_quantile", "linear_quantile"]
FEATURES = 8


@pytest.fixture(scope="module", params=FAMILIES)
def fitted(request):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(1500, FEATURES))
    x[:, 1] += 100.0
    signal = x[:, 0] + rng.normal(scale=1.0, size=len(x))
    labels = signal * 0.01 if "quantile" in request.param else (signal > 0).astype(float)
    params = {"max_leaf_nodes": 7} if "boosting" in request.param else {}  # small trees: a cheap fit, same code path
    model = make_forecaster(request.param, params, Settings()).fit(x, labels)
    assert model.calibration["method"] != "identity"  # served as trained: calibrated
    return model


@pytest.mark.parametrize("rows", [1, 8, SERIAL_ROWS + 1])  # one request, a batch, an evaluation fold (the pool)
def test_served_output_equals_scikit_learns_public_methods_bit_for_bit(fitted, rows):
    x = np.random.default_rng(rows).normal(size=(rows, FEATURES)) * 3 + np.array([0, 100] + [0] * (FEATURES - 2))
    expected = public_output(fitted, x)
    served = fitted.predict_proba(x)
    assert served.dtype == expected.dtype and served.shape == expected.shape
    assert served.tobytes() == expected.tobytes()
    if rows == 1:  # and through the call the service makes
        task = "regression" if fitted.task == "regression" else "classification"
        loaded = LoadedModel("itff-T-x", "T", "x", "1", fitted.family, {"task": task}, fitted)
        assert loaded.predict(x)[0].tobytes() == expected.tobytes()


def test_a_row_with_the_wrong_number_of_features_is_refused_not_read_out_of_bounds():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(300, 4)), rng.normal(size=300)
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.linear_model import LogisticRegression, Ridge

    short = np.zeros((1, 3), np.float32)
    for estimator in (Ridge().fit(x, y), HistGradientBoostingRegressor(max_iter=5).fit(x, y)):
        with pytest.raises(ValueError, match="expects 4 features"):
            regression(estimator, short)
    for estimator in (LogisticRegression().fit(x, y > 0), HistGradientBoostingClassifier(max_iter=5).fit(x, y > 0)):
        with pytest.raises(ValueError, match="expects 4 features"):
            positive_probability(estimator, short)


def test_a_non_finite_row_is_still_refused_by_the_linear_models_and_routed_by_the_trees_as_before():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(300, 4)), rng.normal(size=300)
    from sklearn.ensemble import HistGradientBoostingRegressor
    from sklearn.linear_model import LogisticRegression, Ridge

    row = np.array([[0.0, np.nan, 1.0, np.inf]])
    with pytest.raises(ValueError, match="NaN"):
        regression(Ridge().fit(x, y), row)
    with pytest.raises(ValueError, match="NaN"):
        positive_probability(LogisticRegression().fit(x, y > 0), row)
    trees = HistGradientBoostingRegressor(max_iter=5).fit(x, y)
    missing = np.array([[0.0, np.nan, 1.0, 2.0]])  # a tree sends NaN down its missing-value branch
    assert regression(trees, missing).tobytes() == trees.predict(missing).tobytes()
