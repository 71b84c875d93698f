"""The trading signal rule: long at P(up) >= threshold, short at P(up) <= 1 - threshold (where shorting makes
sense), else flat. One rule for the backtest that judges it, the MLflow pyfunc and the service that serve it."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt


def allows_short(target: str) -> bool:
    """level_up = 0 also means "neither barrier touched": a low probability is no reason to short."""
    return target == "direction"


def signals(prob: np.ndarray, threshold: float | np.ndarray, allow_short: bool = True) -> np.ndarray:
    """+1 long at P(up) >= threshold, -1 short at P(up) <= 1 - threshold (where shorting makes sense), else 0."""
    out: np.ndarray = np.where(prob >= threshold, 1, np.where(allow_short & (prob <= 1 - threshold), -1, 0))
    return out


def signal_names(prob: npt.ArrayLike, threshold: float, target: str) -> np.ndarray:
    """The same rule as `signals`, as the words the service answers with."""
    names: np.ndarray = np.array(["short", "flat", "long"])[
        signals(np.asarray(prob), threshold, allows_short(target)) + 1
    ]
    return names


def served_signals(
    prob: npt.ArrayLike, threshold: float, target: str, tradable: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """What a served answer says: the signal words and `allow`. A model whose rule has no significant edge
    (tradable False) still serves its probability, but its signal is flat and nothing is allowed."""
    prob = np.asarray(prob, dtype=np.float64)
    if not tradable:
        return np.full(prob.shape, "flat"), np.zeros(prob.shape, dtype=bool)
    return signal_names(prob, threshold, target), np.maximum(prob, 1 - prob) >= threshold


BANDS = ("p10", "p50", "p90")


def answer_columns(out: np.ndarray, meta: dict[str, Any], target: str) -> dict[str, Any]:
    """The fields a served answer holds for a model's outputs, a value per row: quantile bands for regression,
    else P(up) with its confidence, threshold and trade decision. The MLflow pyfunc answers with these columns,
    and the service with their last row, so the two cannot drift apart."""
    if meta["task"] == "regression":
        return {name: out[:, i] for i, name in enumerate(BANDS)}
    threshold = float(meta["threshold"])
    # Models registered before the trade decision existed carry no `tradable`: they trade as they always did.
    signal, allow = served_signals(out, threshold, target, meta.get("tradable", True))
    return {
        "prob_up": out,
        "confidence": np.maximum(out, 1 - out),
        "threshold": threshold,
        "allow": allow,
        "signal": signal,
    }
