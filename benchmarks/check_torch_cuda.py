"""The torch families on CUDA: do they train there, and does a model trained on a GPU serve the same answer on
the CPU-only service that loads it? Run on a machine with a GPU (the `device` tool, or any CUDA box):

    PYTHONPATH=. python benchmarks/check_torch_cuda.py [rows]

It prints, per family: fit time on the CPU and on CUDA, the largest |P(up)| difference between the CUDA
model's own predictions and the same saved model loaded on the CPU, how many signals that flips at the
decision threshold, and whether MC-dropout sampling runs on CUDA. Needs only numpy, scikit-learn and torch."""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from itff_platform.models import load_forecaster
from itff_platform.models.sequence import LSTMForecaster, SequenceForecaster, TransformerForecaster

THRESHOLD = 0.55  # a typical calibrated decision threshold: |P - 0.5| beyond 0.05 trades


def synthetic(rows: int, features: int = 24, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """A random walk's returns and lags as features; the label is the next return's sign (weakly predictable
    from a slow drift term, so the networks learn something)."""
    rng = np.random.default_rng(seed)
    drift = np.sin(np.arange(rows) / 500.0) * 0.3
    returns = rng.standard_normal(rows) + drift
    x = np.stack([np.roll(returns, k) for k in range(features)], axis=1).astype(np.float64)
    y = (np.roll(returns, -1) > 0).astype(np.int64)
    return x[features:-1], y[features:-1]


def timed_fit(model: SequenceForecaster, x: np.ndarray, y: np.ndarray) -> float:
    start = time.perf_counter()
    model.fit(x, y)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main(rows: int) -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check here")
        return 1
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}, {rows} rows")
    x, y = synthetic(rows)
    train, test = slice(0, int(len(y) * 0.8)), slice(int(len(y) * 0.8), None)
    failures = 0
    for family in (LSTMForecaster, TransformerForecaster):
        cpu_model = family(seed=3, epochs=2, device="cpu")
        cuda_model = family(seed=3, epochs=2, device="cuda")
        cpu_s, cuda_s = timed_fit(cpu_model, x[train], y[train]), timed_fit(cuda_model, x[train], y[train])
        on_cuda = cuda_model.predict_proba(x[test])
        with tempfile.TemporaryDirectory() as folder:
            cuda_model.save(Path(folder))
            with torch.device("cpu"):
                loaded = load_forecaster(folder)
            loaded.device_name = "cpu"  # what a CPU-only service does (auto there resolves to the CPU)
            loaded.net.to("cpu")
            on_cpu = loaded.predict_proba(x[test])
        diff = float(np.max(np.abs(on_cuda - on_cpu)))
        flips = int(
            np.sum((np.maximum(on_cuda, 1 - on_cuda) >= THRESHOLD) != (np.maximum(on_cpu, 1 - on_cpu) >= THRESHOLD))
        )
        samples = cuda_model.probability_samples(x[test][:500])
        ok = diff < 1e-4 and samples is not None and samples.shape[0] == cuda_model.mc_samples
        failures += not ok
        print(
            f"{family.family:12s} fit cpu {cpu_s:6.2f} s  cuda {cuda_s:6.2f} s  "
            f"max|P_cuda - P_cpu(same weights)| {diff:.2e}  signal flips at {THRESHOLD}: {flips}/{len(on_cpu)}  "
            f"mc samples on cuda: {None if samples is None else samples.shape}  {'OK' if ok else 'FAIL'}"
        )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 40_000))
