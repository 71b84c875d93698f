"""The tests behind every promotion decision: they must see real gains, and not see gains in noise."""

import numpy as np
import pytest

from itff_platform.training.significance import diebold_mariano, mean_above_zero_p_value, newey_west_lag


def test_a_real_gain_is_significant_and_noise_is_not():
    rng = np.random.default_rng(0)
    reference = rng.gamma(2.0, 0.35, 3000)  # log losses are positive and skewed
    better = reference - 0.02 + rng.normal(0, 0.05, 3000)
    assert diebold_mariano(better, reference, horizon=4).p_value < 0.01
    same = reference + rng.normal(0, 0.05, 3000)
    assert diebold_mariano(same, reference, horizon=4).p_value > 0.05
    worse = reference + 0.02 + rng.normal(0, 0.05, 3000)
    assert diebold_mariano(worse, reference, horizon=4).p_value > 0.95  # one-sided: worse is never "significant"


def test_a_gain_of_1e_4_between_two_noisy_families_is_not_evidence():
    """Issue 9: the transformer was picked over logistic for 0.0001 of log loss."""
    rng = np.random.default_rng(1)
    logistic = rng.gamma(2.0, 0.35, 3000)
    transformer = logistic - 1e-4 + rng.normal(0, 0.03, 3000)
    assert not diebold_mariano(transformer, logistic, horizon=4).significant(0.05)


def test_autocorrelated_differentials_need_the_hac_variance():
    """Overlapping labels make neighbouring rows' losses move together; an iid variance would overstate the
    evidence. An AR(1) loss differential with a small mean: the HAC test is far less sure than a naive z-test."""
    rng = np.random.default_rng(2)
    noise = rng.normal(0, 0.05, 4000)
    d = np.empty(4000)
    d[0] = noise[0]
    for t in range(1, 4000):
        d[t] = 0.9 * d[t - 1] + noise[t]
    d += 0.01
    reference = np.full(4000, 0.7)
    result = diebold_mariano(reference - d, reference, horizon=4)
    naive_z = d.mean() / (d.std() / np.sqrt(len(d)))
    assert result.statistic < naive_z / 2
    assert result.lag == newey_west_lag(4000, 4) >= 4


def test_comparing_different_rows_is_refused():
    with pytest.raises(ValueError, match="same rows"):
        diebold_mariano(np.ones(10), np.ones(11))


def test_bootstrap_edge_of_trade_returns():
    rng = np.random.default_rng(3)
    assert mean_above_zero_p_value(rng.normal(0.004, 0.02, 400)) < 0.01
    assert mean_above_zero_p_value(rng.normal(-0.001, 0.02, 400)) > 0.3
    assert mean_above_zero_p_value(np.array([0.05])) == 1.0  # one trade is no evidence
