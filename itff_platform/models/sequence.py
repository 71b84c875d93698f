"""torch sequence families: LSTM and Transformer encoders over rolling windows of the feature rows.

They run on the CPU by default and on CUDA when present (`torch_device=auto`). The served probability is
the deterministic pass (dropout off), the one evaluated and promoted; MC dropout's N stochastic passes give
only its uncertainty, their standard deviation."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from itff_platform.models.base import Forecaster, clip_probability

if TYPE_CHECKING:
    from optuna import Trial

    from itff_platform.settings import Settings


def pick_device(preference: str = "auto") -> torch.device:
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)


def rolling_windows(rows: np.ndarray, length: int) -> np.ndarray:
    """(n, length, features): window i ends at row i. The first rows repeat row 0 as padding, so every
    row gets a prediction; callers hand over `context_rows` of history to make those real."""
    padded = np.concatenate([np.repeat(rows[:1], length - 1, axis=0), rows])
    return np.lib.stride_tricks.sliding_window_view(padded, (length, rows.shape[1]))[:, 0]


class LSTMNet(nn.Module):
    def __init__(self, features: int, hidden: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.lstm = nn.LSTM(
            features, hidden, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0.0
        )
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        logits: torch.Tensor = self.head(out[:, -1]).squeeze(-1)
        return logits


class TransformerNet(nn.Module):
    def __init__(self, features: int, length: int, width: int, heads: int, layers: int, dropout: float) -> None:
        super().__init__()
        self.embed = nn.Linear(features, width)
        self.position = nn.Parameter(torch.zeros(1, length, width))
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=2 * width, dropout=dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=layers, enable_nested_tensor=False)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        encoded = self.encoder(self.embed(x) + self.position)
        logits: torch.Tensor = self.head(encoded[:, -1]).squeeze(-1)
        return logits


class SequenceForecaster(Forecaster):
    """Shared training loop; subclasses build the network."""

    def __init__(
        self,
        params: dict[str, Any] | None = None,
        seed: int = 42,
        length: int = 24,
        epochs: int = 3,
        device: str = "auto",
        mc_samples: int = 20,
        max_train_rows: int | None = None,
    ) -> None:
        super().__init__(params, seed)
        self.length, self.epochs, self.device_name, self.mc_samples = length, epochs, device, mc_samples
        self.max_train_rows = max_train_rows
        self.context_rows = length - 1

    @classmethod
    def from_settings(cls, params: dict[str, Any], settings: Settings) -> Forecaster:
        return cls(
            params,
            settings.training.seed,
            length=settings.training.sequence_length,
            epochs=settings.training.torch_epochs,
            device=settings.training.torch_device,
            mc_samples=settings.training.mc_dropout_samples,
            max_train_rows=settings.training.torch_max_train_rows,
        )

    def build(self, features: int) -> nn.Module:
        raise NotImplementedError

    def fit(self, features: np.ndarray, labels: np.ndarray, sample_weight: np.ndarray | None = None) -> Forecaster:
        if self.max_train_rows and len(labels) > self.max_train_rows:
            # The most recent rows: the CPU budget buys more from recent history than from a thinner sample of all.
            keep = slice(len(labels) - self.max_train_rows, None)
            features, labels = features[keep], labels[keep]
            sample_weight = sample_weight[keep] if sample_weight is not None else None
        torch.manual_seed(self.seed)
        generator = torch.Generator().manual_seed(self.seed)
        device = pick_device(self.device_name)
        windows = torch.from_numpy(rolling_windows(self.fit_scaler(features), self.length).copy())
        targets = torch.from_numpy(labels.astype(np.float32))
        weights = torch.from_numpy(
            (sample_weight if sample_weight is not None else np.ones(len(labels))).astype(np.float32)
        )
        self.net = self.build(features.shape[1]).to(device)
        optimiser = torch.optim.AdamW(
            self.net.parameters(), lr=self.params.get("learning_rate", 1e-3), weight_decay=1e-4
        )
        loss_fn = nn.BCEWithLogitsLoss(reduction="none")
        batch = self.params.get("batch_size", 256)
        self.net.train()
        for _ in range(self.epochs):
            order = torch.randperm(len(windows), generator=generator)
            for start in range(0, len(order), batch):
                idx = order[start : start + batch]
                x, y, w = windows[idx].to(device), targets[idx].to(device), weights[idx].to(device)
                loss = (loss_fn(self.net(x), y) * w).sum() / w.sum()
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
        self.net.eval()
        return self

    @torch.no_grad()
    def _probabilities(self, features: np.ndarray, stochastic: bool) -> np.ndarray:
        device = pick_device(self.device_name)
        self.net.train(stochastic)  # dropout on only for MC sampling
        windows = torch.from_numpy(rolling_windows(self.scale(features), self.length).copy())
        out = [torch.sigmoid(self.net(windows[s : s + 2048].to(device))).cpu() for s in range(0, len(windows), 2048)]
        self.net.eval()
        return torch.cat(out).numpy().astype(np.float64)

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        return clip_probability(self._probabilities(features, stochastic=False))

    def probability_samples(self, features: np.ndarray) -> np.ndarray | None:
        torch.manual_seed(self.seed)
        return np.stack(
            [clip_probability(self._probabilities(features, stochastic=True)) for _ in range(self.mc_samples)]
        )

    def _state(self) -> dict[str, Any]:
        buffer = io.BytesIO()
        # CPU copies of the weights; moving the live network would break it on a CUDA machine.
        torch.save({k: v.detach().cpu() for k, v in self.net.state_dict().items()}, buffer)
        # Nor the device: the machine that loads the model picks its own (a GPU-trained model serves on a CPU box).
        state = {k: v for k, v in super()._state().items() if k not in ("net", "device_name")}
        assert self.scaler is not None  # saved only after fit, which sets it
        return {**state, "net_state": buffer.getvalue(), "n_features": self.scaler.n_features_in_}

    def _restore(self, state: dict[str, Any]) -> None:
        net_state, n_features = state.pop("net_state"), state.pop("n_features")
        state.pop("device_name", None)  # saved by versions before this one: the trainer's device, not ours
        super()._restore(state)
        self.device_name = "auto"
        self.net = self.build(n_features)
        self.net.load_state_dict(torch.load(io.BytesIO(net_state), map_location="cpu"))
        self.net.to(pick_device(self.device_name)).eval()


class LSTMForecaster(SequenceForecaster):
    family = "lstm"
    complexity = 4

    @classmethod
    def search_space(cls, trial: Trial) -> dict[str, Any]:
        return {
            "hidden": trial.suggest_categorical("hidden", [16, 32, 64]),
            "dropout": trial.suggest_float("dropout", 0.1, 0.4),
            "learning_rate": trial.suggest_float("learning_rate", 3e-4, 3e-3, log=True),
        }

    def build(self, features: int) -> nn.Module:
        return LSTMNet(features, self.params.get("hidden", 32), 1, self.params.get("dropout", 0.2))


class TransformerForecaster(SequenceForecaster):
    family = "transformer"
    complexity = 5

    @classmethod
    def search_space(cls, trial: Trial) -> dict[str, Any]:
        return {
            "width": trial.suggest_categorical("width", [16, 32]),
            "dropout": trial.suggest_float("dropout", 0.1, 0.4),
            "learning_rate": trial.suggest_float("learning_rate", 3e-4, 3e-3, log=True),
        }

    def build(self, features: int) -> nn.Module:
        return TransformerNet(
            features, self.length, self.params.get("width", 32), 4, 1, self.params.get("dropout", 0.2)
        )
