import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from itff_platform.models import forecaster_class, load_forecaster, make_forecaster
from itff_platform.models.lorentzian import lorentzian_distances
from itff_platform.models.registry import names
from itff_platform.settings import Settings

CLASSIFIERS = names("classification", baseline=False)
REGRESSORS = names("regression", baseline=False)

SETTINGS = Settings(torch_epochs=4, sequence_length=8, mc_dropout_samples=10, torch_max_train_rows=3000)


def learnable(n=3000, seed=0):
    """Feature 0 carries the label through noise; the rest is noise. Feature 1 has a large offset."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    x = rng.normal(0, 1, (n, 6))
    x[:, 0] += 1.5 * (labels - 0.5) * 2
    x[:, 1] += 1000.0
    return x, labels


@pytest.mark.parametrize("family", CLASSIFIERS)
def test_every_classifier_learns_saves_and_loads(family, tmp_path):
    x, y = learnable()
    model = make_forecaster(family, {}, SETTINGS).fit(x[:2000], y[:2000])
    prob = model.predict_proba(x[2000:])
    assert prob.shape == (1000,) and ((prob > 0) & (prob < 1)).all()
    assert roc_auc_score(y[2000:], prob) > 0.8, family
    model.save(tmp_path / family)
    again = load_forecaster(tmp_path / family)
    assert np.allclose(again.predict_proba(x[2000:]), prob)


@pytest.mark.parametrize("family", CLASSIFIERS)
def test_the_scaler_is_fitted_on_the_training_rows_only(family):
    x, y = learnable()
    shifted = x.copy()
    shifted[2000:] += 50.0  # the future looks nothing like the past
    model = make_forecaster(family, {}, SETTINGS).fit(shifted[:2000], y[:2000])
    # The family learns on the training rows before its calibration slice (purged by the label horizon).
    learnt = 2000 - model.calibration["rows"] - SETTINGS.features.label_horizon
    assert np.allclose(model.scaler.mean_, shifted[:learnt].mean(axis=0))


def test_every_family_declares_a_search_space():
    import optuna

    for family in CLASSIFIERS + REGRESSORS:
        trial = optuna.create_study().ask()
        assert forecaster_class(family).search_space(trial), family


@pytest.mark.parametrize("family", REGRESSORS)
def test_quantile_regressors_give_ordered_bands_that_cover(family):
    rng = np.random.default_rng(3)
    x = rng.normal(0, 1, (4000, 4))
    y = 0.5 * x[:, 0] + rng.normal(0, 1, 4000)
    model = make_forecaster(family, {}, SETTINGS).fit(x[:3000], y[:3000])
    bands = model.predict_proba(x[3000:])
    assert (bands[:, 0] <= bands[:, 1]).all() and (bands[:, 1] <= bands[:, 2]).all()
    coverage = np.mean((y[3000:] >= bands[:, 0]) & (y[3000:] <= bands[:, 2]))
    assert 0.7 < coverage < 0.9  # nominal 80 %


def test_lorentzian_distance_is_the_sum_of_log1p_abs_differences():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(5, 3)), rng.normal(size=(7, 3))
    expected = [[sum(np.log(1 + abs(p - q)) for p, q in zip(row, other)) for other in b] for row in a]
    assert np.allclose(lorentzian_distances(a, b), expected)


def test_lorentzian_samples_history_every_stride_bars_ending_at_the_newest():
    x, y = learnable(1000)
    uncalibrated = SETTINGS.model_copy(update={"calibration_rows": 0})  # the family's own sampling, nothing held back
    model = make_forecaster("lorentzian", {"stride": 4, "max_history": 100}, uncalibrated).fit(x, y)
    assert len(model.history) == 100
    assert np.allclose(model.history[-1], model.scale(x[-1:])[0])


@pytest.mark.parametrize("family", ["lstm", "transformer"])
def test_mc_dropout_gives_a_spread_around_the_prediction(family):
    x, y = learnable(1500)
    model = make_forecaster(family, {"dropout": 0.3}, SETTINGS).fit(x[:1000], y[:1000])
    mean, spread = model.predict_with_uncertainty(x[1000:])
    assert spread is not None and (spread > 0).mean() > 0.9
    assert np.corrcoef(mean, model.predict_proba(x[1000:]))[0, 1] > 0.9


def test_persistence_baseline_is_calibrated_on_the_training_window():
    rng = np.random.default_rng(5)
    last_return = rng.normal(size=5000)
    labels = (
        (last_return > 0) & (rng.uniform(size=5000) < 0.7) | (last_return <= 0) & (rng.uniform(size=5000) < 0.4)
    ).astype(int)
    x = np.column_stack([rng.normal(size=5000), last_return])
    model = make_forecaster("baseline_persistence", {"last_return_column": 1}, SETTINGS).fit(x, labels)
    assert model.rate_after_up == pytest.approx(0.7, abs=0.03) and model.rate_after_down == pytest.approx(0.4, abs=0.03)


@pytest.mark.parametrize("family", ["logistic", "boosting"])
def test_a_training_window_with_one_class_predicts_its_rate_instead_of_crashing(family):
    x, _ = learnable(500)
    model = make_forecaster(family, {}, SETTINGS).fit(x, np.ones(500, dtype=int))
    assert np.allclose(model.predict_proba(x[:10]), 1 - 1e-6)
