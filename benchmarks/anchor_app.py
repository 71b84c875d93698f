"""The anchor `make bench-serve` measures /predict against: a bare FastAPI endpoint scoring the same champion.

    uvicorn benchmarks.anchor_app:app --http httptools --workers 2

It does what any hand-written endpoint does (parse the row, call the model, answer) and nothing the service adds
(auth, rate limit, size limit, the log, metrics, the regime): the ratio says what those guarantees cost."""

from __future__ import annotations

import os

import numpy as np
from fastapi import FastAPI
from pydantic import BaseModel

from itff_platform.contracts.champions import ChampionStore
from itff_platform.settings import get_settings

SYMBOL, TARGET = os.environ.get("ITFF_BENCH_SYMBOL", "ETHUSDT"), os.environ.get("ITFF_BENCH_TARGET", "direction")
store = ChampionStore(get_settings())
store.refresh()
model = store.get(SYMBOL, TARGET)
assert model is not None, f"no champion for {SYMBOL} {TARGET}"
NAMES = model.meta["features"]
app = FastAPI()


class Row(BaseModel):
    symbol: str
    target: str = "direction"
    features: dict[str, float]


@app.post("/predict")
def predict(row: Row) -> dict:
    out, _ = model.predict(np.asarray([[row.features[name] for name in NAMES]]))
    return {"symbol": row.symbol, "target": row.target, "prob_up": float(out[-1])}
