"""A torch model keeps no memory of the machine it was trained on: one trained with ITFF_TORCH_DEVICE=cuda on
a GPU box must load and answer on the CPU-only service. (benchmarks/check_torch_cuda.py checks the GPU side.)"""

from __future__ import annotations

import numpy as np
import pytest

from itff_platform.models import load_forecaster
from itff_platform.models.sequence import LSTMForecaster


def test_a_model_trained_on_cuda_loads_and_predicts_on_a_cpu_machine(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((300, 5)), rng.integers(0, 2, 300)
    model = LSTMForecaster(seed=1, epochs=1, length=8, device="cpu").fit(x, y)
    expected = model.predict_proba(x)
    model.device_name = "cuda"  # what a fit on a GPU machine with torch_device=cuda leaves behind
    model.save(tmp_path)
    loaded = load_forecaster(tmp_path)
    np.testing.assert_array_equal(loaded.predict_proba(x), expected)
