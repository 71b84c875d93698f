"""The adaptive batcher on a real fitted model: concurrent rows share a model call and get their own answers."""

import asyncio

import numpy as np
import pytest

from itff_platform.contracts.champions import LoadedModel
from itff_platform.models import make_forecaster
from itff_platform.serving.batching import RowBatcher
from itff_platform.settings import Settings


def loaded(forecaster) -> LoadedModel:
    return LoadedModel(
        "itff-TEST-direction", "TEST", "direction", "1", forecaster.family, {"task": "classification"}, forecaster
    )


@pytest.fixture(scope="module")
def model():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5))
    y = (x[:, 0] + rng.normal(scale=0.5, size=400) > 0).astype(float)
    return loaded(make_forecaster("logistic", {}, Settings()).fit(x, y)), rng.normal(size=(40, 5))


def test_concurrent_rows_are_scored_together_and_each_gets_its_own_answer(model):
    model, rows = model
    sizes = []
    batcher = RowBatcher(max_batch_size=16, on_batch=sizes.append)

    async def many():
        return await asyncio.gather(*(batcher.predict(model, rows[i : i + 1]) for i in range(len(rows))))

    answers = asyncio.run(many())
    alone = model.predict(rows)[0]
    assert np.allclose([a[0][0] for a in answers], alone, atol=1e-12)
    assert sum(sizes) == len(rows) and max(sizes) == 16 and len(sizes) < len(rows)


def test_a_lone_row_is_scored_at_once(model):
    model, rows = model
    sizes = []
    answer = asyncio.run(RowBatcher(64, on_batch=sizes.append).predict(model, rows[:1]))
    assert sizes == [1] and answer[0].shape == (1,)


def test_a_failing_model_call_fails_every_waiting_request_and_none_hangs(model):
    model, rows = model

    class Broken:
        context_rows, family = 0, "broken"

        def predict_proba(self, x):
            raise RuntimeError("model exploded")

        def predict_with_uncertainty(self, x):  # the Forecaster interface the service scores through
            return self.predict_proba(x), None

    broken = loaded(Broken())
    batcher = RowBatcher(64)

    async def many():
        return await asyncio.gather(
            *(batcher.predict(broken, rows[i : i + 1]) for i in range(5)), return_exceptions=True
        )

    results = asyncio.run(asyncio.wait_for(many(), timeout=5))
    assert all(isinstance(r, RuntimeError) for r in results)


def test_a_row_that_breaks_the_model_fails_alone_and_its_batch_mates_still_get_answers(model):
    model, rows = model
    poisoned = rows[:5].copy()
    poisoned[2, 0] = np.nan  # sklearn refuses NaN: the stacked call raises
    batcher = RowBatcher(64)

    async def many():
        return await asyncio.gather(
            *(batcher.predict(model, poisoned[i : i + 1]) for i in range(5)), return_exceptions=True
        )

    results = asyncio.run(many())
    assert isinstance(results[2], ValueError)
    alone = model.predict(rows[:5])[0]
    assert all(np.isclose(results[i][0][0], alone[i]) for i in (0, 1, 3, 4))


def test_a_torch_model_serves_its_deterministic_probability_and_mc_dropout_only_as_uncertainty():
    """Thresholds, backtests and promotion use the deterministic forward pass; the service must answer with
    the same number. MC dropout (heavy here, so its mean would visibly differ) only fills `uncertainty`."""
    from itff_platform.contracts.answers import build_answer

    settings = Settings(torch_epochs=1, sequence_length=4, mc_dropout_samples=8, torch_device="cpu")
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 5))
    y = (x[:, 0] > 0).astype(float)
    forecaster = make_forecaster("lstm", {"hidden": 8, "dropout": 0.5}, settings).fit(x, y)
    model = LoadedModel(
        "itff-TEST-direction",
        "TEST",
        "direction",
        "1",
        "lstm",
        {"task": "classification", "threshold": 0.55},
        forecaster,
    )
    window = x[:20]
    out, spread = asyncio.run(RowBatcher(64).predict(model, window))
    deterministic = forecaster.predict_proba(window)
    assert np.array_equal(out, deterministic) and spread is not None and spread.max() > 0
    answer = build_answer(model, window, out, spread, "neutral", None, max_age_days=30)
    assert answer["prob_up"] == deterministic[-1] and answer["uncertainty"] == spread[-1] > 0
