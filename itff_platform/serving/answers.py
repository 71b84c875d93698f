"""What a prediction answer holds, built from a model's output. One function for the service and for replay,
so a replayed prediction is exactly what the service would have answered."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np

from itff_platform.monitoring.prediction_log import input_hash
from itff_platform.training.backtest import signal_names

OOD_Z = 6.0  # a scaled feature this many training standard deviations out is outside what the model saw
MC_DROPOUT_FAMILIES = ("lstm", "transformer")


def score(model, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """The model's output for the rows, and the MC-dropout spread (torch families) or None.

    The output is always the deterministic forward pass: thresholds, backtests and promotion were computed on
    it. MC dropout is reported beside it as `uncertainty` and never replaces it: its mean can sit several
    points away, which would change signals the evaluation never saw."""
    out = model.forecaster.predict_proba(x)
    if model.meta["task"] == "regression" or model.family not in MC_DROPOUT_FAMILIES:
        return out, None
    return out, model.forecaster.predict_with_uncertainty(x)[1]


def build_answer(model, x: np.ndarray, out: np.ndarray, spread: np.ndarray | None, regime: str | None,
                 bar_time: datetime | None, served_at: datetime | None = None) -> dict:
    scaled = model.forecaster.scale(x[-1:]) if model.forecaster.scaler is not None else np.zeros((1, 1))
    served_at = served_at or datetime.now(timezone.utc)
    answer = {
        "symbol": model.symbol, "target": model.target, "regime": regime or "unknown",
        "model_version": model.version, "family": model.family,
        "out_of_distribution": bool(np.abs(scaled).max() > OOD_Z),
        "served_at": served_at.isoformat(timespec="milliseconds"),
        "bar_time": bar_time.isoformat() if bar_time is not None else None,
    }
    if model.meta["task"] == "regression":
        p10, p50, p90 = (float(v) for v in out[-1])
        answer.update({"p10": p10, "p50": p50, "p90": p90, "signal": "flat"})
    else:
        prob, threshold = float(out[-1]), float(model.meta["threshold"])
        confidence = max(prob, 1 - prob)
        answer.update({"signal": str(signal_names(prob, threshold, model.target)), "prob_up": prob, "confidence": confidence,
                       "threshold": threshold, "allow": confidence >= threshold,
                       "uncertainty": float(spread[-1]) if spread is not None else None})
    return answer


def log_record(answer: dict, x: np.ndarray, request_id: str, endpoint: str, latency_ms: float | None) -> dict:
    """The prediction log's row for an answer (see monitoring.prediction_log.SCHEMA)."""
    record = {k: answer.get(k) for k in ("symbol", "target", "model_version", "family", "regime", "signal", "prob_up",
                                         "threshold", "allow", "uncertainty", "p10", "p50", "p90", "out_of_distribution")}
    record.update({
        "request_id": request_id, "endpoint": endpoint, "latency_ms": latency_ms,
        "input_sha256": input_hash(answer["symbol"], answer["target"], x[-1]),
        "logged_at": datetime.fromisoformat(answer["served_at"]),
        "bar_time": datetime.fromisoformat(answer["bar_time"]) if answer["bar_time"] else None,
    })
    return record
