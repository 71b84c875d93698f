"""What a prediction answer holds, built from a model's output, and the prediction log's record of it. One
function for the service and for replay, so a replayed prediction is exactly what the service would have
answered and logged."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from itff_platform.contracts.signals import answer_columns
from itff_platform.rules import REGIMES

if TYPE_CHECKING:
    from itff_platform.contracts.champions import LoadedModel

OOD_Z = 6.0  # a scaled feature this many training standard deviations out is outside what the model saw


def trading_permission(meta: dict[str, Any]) -> dict[str, Any]:
    """{"tradable", "tradable_reason"} from the model's meta.json. Models trained before training judged the
    trading rule carry neither: they trade, as they always did."""
    return {"tradable": bool(meta.get("tradable", True)), "tradable_reason": meta.get("tradable_reason")}


def model_age(meta: dict[str, Any], as_of: datetime, max_age_days: float) -> dict[str, Any]:
    """{"model_age_days", "expired"}: days from the model's last training bar to `as_of`. Negative when the
    bar asked about is inside the training data. A model without `trained_through` has no known age."""
    trained = meta.get("trained_through")
    if not trained:
        return {"model_age_days": None, "expired": False}
    # Stored as str(timestamp): "2024-07-27 19:00:00+00:00" or "2024-07-27T19:00:00.000000"; the bars are UTC.
    through = datetime.fromisoformat(str(trained)[:19]).replace(tzinfo=UTC)
    age = (as_of - through).total_seconds() / 86400
    return {"model_age_days": round(age, 3), "expired": age > max_age_days}


def build_answer(
    model: LoadedModel,
    x: np.ndarray,
    out: np.ndarray,
    spread: np.ndarray | None,
    regime: str | None,
    bar_time: datetime | None,
    *,
    max_age_days: float,
    served_at: datetime | None = None,
) -> dict[str, Any]:
    scaled = model.forecaster.scale(x[-1:]) if model.forecaster.scaler is not None else np.zeros((1, 1))
    served_at = served_at or datetime.now(UTC)
    permission = trading_permission(model.meta)
    answer = {
        # Anything else would be an unbounded Prometheus label: callers validate, this is the last guard.
        "symbol": model.symbol,
        "target": model.target,
        "regime": regime if regime in REGIMES else "unknown",
        "model_version": model.version,
        "family": model.family,
        "out_of_distribution": bool(np.abs(scaled).max() > OOD_Z),
        "served_at": served_at.isoformat(timespec="milliseconds"),
        "bar_time": bar_time.isoformat() if bar_time is not None else None,
        **model_age(model.meta, bar_time or served_at, max_age_days),
        **permission,
    }
    # The last row, in float64 (a torch model answers in float32), as plain Python values for JSON.
    fields = answer_columns(np.asarray(out[-1:], dtype=np.float64), model.meta, model.target)
    answer.update(
        {name: value[-1].item() if isinstance(value, np.ndarray) else value for name, value in fields.items()}
    )
    if model.meta["task"] == "regression":
        answer["signal"] = "flat"
    else:
        answer["uncertainty"] = float(spread[-1]) if spread is not None else None
    return answer


def log_record(
    answer: dict[str, Any], x: np.ndarray, request_id: str, endpoint: str, latency_ms: float | None
) -> dict[str, Any]:
    """The prediction log's row for an answer (see monitoring.prediction_log.SCHEMA)."""
    record = {
        k: answer.get(k)
        for k in (
            "symbol",
            "target",
            "model_version",
            "family",
            "regime",
            "signal",
            "prob_up",
            "threshold",
            "allow",
            "uncertainty",
            "p10",
            "p50",
            "p90",
            "out_of_distribution",
        )
    }
    record.update(
        {
            "request_id": request_id,
            "endpoint": endpoint,
            "latency_ms": latency_ms,
            "input_sha256": input_hash(answer["symbol"], answer["target"], x[-1]),
            "logged_at": datetime.fromisoformat(answer["served_at"]),
            "bar_time": datetime.fromisoformat(answer["bar_time"]) if answer["bar_time"] else None,
        }
    )
    return record


def input_hash(symbol: str, target: str, row: np.ndarray) -> str:
    """Same inputs, same hash: the feature row as float64 bytes, with what it was asked about."""
    return hashlib.sha256(
        f"{symbol}|{target}|".encode() + np.ascontiguousarray(row, dtype=np.float64).tobytes()
    ).hexdigest()
