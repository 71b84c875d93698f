"""What is evaluated is what is deployed, and decisions respect noise: the threshold rule replayed walk-forward,
one probability for torch families, the challenger chosen among families within noise of each other."""

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl

from itff_platform.models import make_forecaster
from itff_platform.settings import Settings
from itff_platform.training import metrics as m
from itff_platform.training.dataset import TrainingData
from itff_platform.training.evaluation import evaluate
from itff_platform.training.promotion import Candidate, choose_challenger
from itff_platform.training.splits import walk_forward_splits
from itff_platform.training.study import registration_refusal


def synthetic_data(n=4000, seed=0) -> tuple[TrainingData, np.ndarray, list]:
    rng = np.random.default_rng(seed)
    forward = rng.normal(0, 0.01, n)
    stamps = (np.datetime64("2024-01-01T00:00", "us") + np.arange(n) * np.timedelta64(1, "h")).astype("datetime64[us]")
    regimes = np.resize(
        np.array(["trending_up", "trending_up", "range_bound"], dtype=object), n
    )  # decisions land on both
    data = TrainingData(
        "SYNUSDT",
        "direction",
        ["a"],
        rng.normal(size=(n, 1)),
        (forward > 0).astype(int),
        stamps,
        regimes,
        forward,
        np.full(n, 100.0),
        {},
    )
    folds = walk_forward_splits(n, 4, 500, 4, 24)
    truth_moves = forward[np.concatenate([f.test for f in folds])]
    prob = np.clip(0.45 + 0.1 * (truth_moves > 0) + rng.normal(0, 0.05, len(truth_moves)), 0.01, 0.99)
    return data, prob, folds


def test_the_reported_trades_are_the_deployed_rule_replayed_forward():
    """Issue 9: fold 0 traded at a 0.55 default no deployed model uses, so the walk-forward trade count and
    profit factor described a rule nobody runs. Now each fold trades at the threshold chosen from the folds
    before it, exactly as the deployed threshold is chosen, and the first fold does not trade."""
    data, prob, folds = synthetic_data()
    settings = Settings()
    with tempfile.TemporaryDirectory() as scratch:
        result = evaluate(data, folds, prob, [0.69] * 4, settings, "logistic", Path(scratch))
    table = result.fold_table
    assert table.filter(pl.col("fold") == 0)["trades"].is_null().all()  # no past fold: no rule, no trades
    truth = data.y[np.concatenate([f.test for f in folds])]
    forward = data.forward_return[np.concatenate([f.test for f in folds])]
    for k in (1, 2, 3):
        past = slice(0, 500 * k)
        expected = m.choose_threshold(
            truth[past],
            prob[past],
            forward[past],
            settings.features.label_horizon,
            settings.trading.fees_bps,
            settings.trading.min_trades,
            settings.trading.default_threshold,
        )
        assert table.filter(pl.col("fold") == k)["threshold"].item() == expected
        assert result.metrics[f"fold{k}_trades"] == table.filter(pl.col("fold") == k)["trades"].item()
    assert result.metrics["backtest_trades"] == sum(result.metrics[f"fold{k}_trades"] for k in (1, 2, 3))
    # Per-regime figures split the same trades.
    assert result.regime_table["trades"].sum() == result.metrics["backtest_trades"]
    assert {
        "backtest_profit_factor_trending_up",
        "backtest_max_drawdown_range_bound",
        "backtest_sharpe_trending_up",
        "backtest_hit_rate_trades_range_bound",
    } <= set(result.metrics)
    # The deployed threshold looks at every fold; the holdout's figures use the rule chosen before it.
    assert result.threshold == m.choose_threshold(
        truth,
        prob,
        forward,
        settings.features.label_horizon,
        settings.trading.fees_bps,
        settings.trading.min_trades,
        settings.trading.default_threshold,
    )
    assert result.tradable and "significant edge" in result.tradable_reason


def test_a_rule_with_no_edge_is_not_tradable_however_many_trades():
    data, _, folds = synthetic_data(seed=5)
    coin = np.random.default_rng(9).uniform(0.3, 0.7, 2000)  # knows nothing
    settings = Settings(tradable_min_trades=0)
    with tempfile.TemporaryDirectory() as scratch:
        result = evaluate(data, folds, coin, [0.69] * 4, settings, "logistic", Path(scratch))
    assert not result.tradable and "no significant edge" in result.tradable_reason
    assert result.metrics["tradable_p_value"] >= settings.trading.tradable_alpha


def test_torch_families_serve_the_probability_they_were_evaluated_on():
    """Issue 9: the service served the MC-dropout mean while thresholds and promotion used the deterministic
    output (up to 0.06 apart). The probability is now always predict_proba's; MC dropout is only its spread."""
    from itff_platform.contracts.champions import LoadedModel
    from itff_platform.training.pyfunc import ItffForecastModel

    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(900, 5)), rng.integers(0, 2, 900)
    settings = Settings(torch_epochs=1, sequence_length=6, calibration_rows=200, mc_dropout_samples=8)
    model = make_forecaster("lstm", {"hidden": 16, "dropout": 0.4}, settings).fit(x, y)
    prob, spread = model.predict_with_uncertainty(x[-50:])
    np.testing.assert_array_equal(prob, model.predict_proba(x[-50:]))
    assert spread is not None and spread.max() > 0  # dropout does vary the samples; it just does not move prob_up
    meta = {
        "features": [f"f{i}" for i in range(5)],
        "task": "classification",
        "threshold": 0.55,
        "target": "direction",
        "context_rows": model.context_rows,
    }
    served = LoadedModel("itff-X-direction", "X", "direction", "1", "lstm", meta, model).predict(x[-50:])[0]
    np.testing.assert_array_equal(served, prob)
    pyfunc = ItffForecastModel()
    pyfunc.meta, pyfunc.forecaster = meta, model
    frame = pd.DataFrame(x[-50:], columns=meta["features"])
    with_spread = pyfunc.predict(None, frame, params={"uncertainty": True})
    np.testing.assert_array_equal(with_spread["prob_up"].to_numpy(), pyfunc.predict(None, frame)["prob_up"].to_numpy())
    np.testing.assert_array_equal(with_spread["prob_up"].to_numpy(), prob)


def test_a_model_that_is_not_tradable_serves_flat_through_its_pyfunc():
    from itff_platform.training.pyfunc import ItffForecastModel

    rng = np.random.default_rng(6)
    model = make_forecaster("logistic", {}, Settings(calibration_rows=0)).fit(
        rng.normal(size=(500, 2)), rng.integers(0, 2, 500)
    )
    pyfunc = ItffForecastModel()
    pyfunc.meta = {
        "features": ["a", "b"],
        "task": "classification",
        "threshold": 0.5,
        "target": "direction",
        "tradable": False,
    }
    pyfunc.forecaster = model
    out = pyfunc.predict(None, pd.DataFrame(rng.normal(size=(20, 2)), columns=["a", "b"]))
    assert (out["signal"] == "flat").all() and not out["allow"].any()


class FakeOutOfSample:
    def __init__(self, losses: dict[str, np.ndarray]) -> None:
        self._losses = losses

    def losses(self, run_id: str, holdout: bool):
        values = self._losses[run_id]
        stamps = np.datetime64("2024-01-01", "us") + np.arange(len(values)) * np.timedelta64(1, "h")
        return pl.DataFrame({"timestamp": stamps, "loss": values})


def candidate(family: str, complexity: int, ece: float = 0.01) -> Candidate:
    return Candidate(str(complexity), family, family, {"ece": ece, "recent_log_loss": 0.69}, {}, complexity)


def test_the_simplest_family_within_noise_of_the_best_is_the_challenger():
    rng = np.random.default_rng(7)
    base = rng.gamma(2.0, 0.35, 6000)
    losses = {
        "transformer": base - 1e-4 + rng.normal(0, 0.02, 6000),  # the lowest loss, by noise
        "logistic": base + rng.normal(0, 0.02, 6000),
        "lorentzian": base + 0.03 + rng.normal(0, 0.02, 6000),  # clearly worse
        "boosting": base - 0.001 + rng.normal(0, 0.02, 6000),  # within noise, but miscalibrated
    }
    pool = [
        candidate("transformer", 5),
        candidate("logistic", 1),
        candidate("lorentzian", 2),
        candidate("boosting", 3, ece=0.05),
    ]
    chosen, notes = choose_challenger(pool, FakeOutOfSample(losses), Settings())
    assert chosen.family == "logistic", notes
    assert any("boosting" in n and "ECE" in n for n in notes)
    assert "lorentzian" not in notes[-1]  # significantly worse than the leader: not within noise


def test_a_miscalibrated_study_is_not_registered():
    assert registration_refusal({"ece": 0.15}, Settings()) == "walk-forward ECE 0.1500 > max_ece 0.03"
    assert registration_refusal({"ece": 0.02}, Settings()) is None
    assert registration_refusal({"pinball_loss": 0.002}, Settings()) is None
