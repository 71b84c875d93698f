import numpy as np
import pytest

from itff_platform.training import metrics as m
from itff_platform.training.backtest import backtest, max_drawdown


def test_expected_calibration_error_is_small_when_calibrated_and_large_when_not():
    rng = np.random.default_rng(0)
    prob = rng.uniform(0, 1, 50_000)
    labels = (rng.uniform(0, 1, 50_000) < prob).astype(int)
    assert m.expected_calibration_error(labels, prob) < 0.01
    assert m.expected_calibration_error(labels, np.clip(prob * 0.5 + 0.5, 0, 1)) > 0.2


def reference_ece(labels: np.ndarray, prob: np.ndarray, bins: int) -> float:
    """ECE written out bin by bin, as the platform computed it before calibration_curve."""
    which = np.minimum((prob * bins).astype(int), bins - 1)
    return float(
        sum(
            (which == b).mean() * abs(prob[which == b].mean() - labels[which == b].mean())
            for b in range(bins)
            if (which == b).any()
        )
    )


@pytest.mark.parametrize("bins", [5, 10, 20])
@pytest.mark.parametrize("seed", range(5))
def test_expected_calibration_error_matches_the_bin_by_bin_reference_even_with_empty_bins(seed, bins):
    rng = np.random.default_rng(seed)
    # a wide spread, and a narrow one that leaves most bins empty (calibration_curve drops those)
    for prob in (rng.uniform(0, 1, 5_000), rng.uniform(0.42, 0.61, 700), rng.beta(8, 3, 300)):
        labels = (rng.uniform(0, 1, len(prob)) < prob**1.3).astype(int)
        assert m.expected_calibration_error(labels, prob, bins) == pytest.approx(
            reference_ece(labels, prob, bins), abs=1e-12
        )
        counts, mean_p, rate = m.reliability_bins(labels, prob, bins)
        assert counts.sum() == len(prob) and len(mean_p) == len(rate) == (counts > 0).sum()


def test_expected_calibration_error_of_no_rows_is_zero():
    assert m.expected_calibration_error(np.array([], int), np.array([])) == 0.0


def test_backtest_trades_every_horizon_bars_and_pays_fees_per_side():
    prob = np.array([0.9, 0.9, 0.1, 0.1, 0.5, 0.5, 0.9, 0.9])
    forward = np.array([0.01, 9.0, 0.02, 9.0, 0.05, 9.0, -0.03, 9.0])  # odd rows would overlap: never read
    result = backtest(prob, forward, threshold=0.6, fees_bps=10, horizon=2, periods_per_year=1)
    # long +1%, short a +2% move (loses 1 - e^0.02 in price terms), flat, long a -3% move; 20 bps round trip each
    short = np.log(2 - np.exp(0.02))
    net = np.array([0.01 - 0.002, short - 0.002, -0.03 - 0.002])
    assert result.metrics["trades"] == 3
    assert result.metrics["profit_factor"] == pytest.approx(0.008 / (-(short - 0.002) + 0.032))
    assert result.metrics["hit_rate_trades"] == pytest.approx(1 / 3)
    assert result.metrics["strategy_return"] == pytest.approx(np.exp(net.sum()) - 1)
    assert result.metrics["buy_and_hold_return"] == pytest.approx(np.exp(0.01 + 0.02 + 0.05 - 0.03 - 0.002) - 1)


def test_max_drawdown():
    assert max_drawdown(np.array([1.0, 1.2, 0.9, 1.3, 1.04])) == pytest.approx(0.25)


def test_walk_forward_thresholds_only_look_at_earlier_folds():
    rng = np.random.default_rng(1)
    prob = rng.uniform(0.3, 0.7, 3000)
    forward = rng.normal(0, 0.01, 3000)
    labels = (forward > 0).astype(int)
    sizes = [1000, 1000, 1000]
    args = dict(horizon=1, fees_bps=1, min_trades=20, default=0.55)
    thresholds = m.walk_forward_thresholds(labels, prob, forward, sizes, **args)
    assert np.isnan(thresholds[:1000]).all()  # nothing earlier to learn from: no rule, no trades
    assert not np.isnan(thresholds[1000:]).any()
    # Rewriting the last fold's outcomes cannot change any threshold used before or in it.
    changed = forward.copy()
    changed[2000:] = -changed[2000:]
    again = m.walk_forward_thresholds((changed > 0).astype(int), prob, changed, sizes, **args)
    np.testing.assert_array_equal(again, thresholds)


def test_regression_metrics_use_prices_for_mape_and_count_band_coverage():
    actual = np.array([0.01, -0.02, 0.0, 0.03])
    bands = np.array([[-0.01, 0.0, 0.02]] * 4)
    close = np.full(4, 100.0)
    result = m.regression_metrics(actual, bands, close)
    assert result["band_coverage"] == 0.5
    assert result["mae"] == pytest.approx(np.mean(np.abs(actual)))
    assert result["mape"] == pytest.approx(np.mean(np.abs(1 - np.exp(actual)) / np.exp(actual)))


def test_level_up_style_signals_never_short():
    prob = np.array([0.9, 0.1, 0.1, 0.9])
    result = backtest(prob, np.array([0.01, -0.05, -0.05, 0.01]), 0.6, 0, 1, 1, allow_short=False)
    assert result.metrics["trades"] == 2 and result.metrics["profit_factor"] == float("inf")


def test_the_threshold_sweep_calls_match_the_classification_metrics():
    """The sweep computes precision, recall and F1 itself (21 thresholds, several sweeps per study); they must be
    exactly what classification_metrics reports at each threshold."""
    rng = np.random.default_rng(3)
    prob = rng.uniform(0.3, 0.75, 2000)
    labels = (rng.uniform(size=2000) < prob).astype(int)
    sweep = m.threshold_sweep(labels, prob, rng.normal(0, 0.01, 2000), horizon=4, fees_bps=10)
    for row in sweep.iter_rows(named=True):
        reference = m.classification_metrics(labels, prob, row["threshold"])
        assert (row["precision"], row["recall"], row["f1"]) == pytest.approx(
            (reference["precision"], reference["recall"], reference["f1"]), abs=1e-12
        )
