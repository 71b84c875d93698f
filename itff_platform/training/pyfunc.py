"""The MLflow pyfunc that carries everything a prediction needs: the feature list and order, the scaler and
model (inside the saved forecaster), the regime rules, the decision threshold and the label horizon."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow.models
import numpy as np
import pandas as pd
from mlflow.pyfunc.model import PythonModel, PythonModelContext

from itff_platform.contracts.signals import answer_columns


class ItffForecastModel(PythonModel):
    def load_context(self, context: PythonModelContext) -> None:
        from itff_platform.models import load_forecaster

        folder = Path(context.artifacts["forecaster"])
        self.meta = json.loads((folder / "meta.json").read_text())
        self.forecaster = load_forecaster(folder)

    def predict(
        self, context: PythonModelContext | None, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        features = self.meta["features"]
        missing = [f for f in features if f not in model_input.columns]
        if missing:
            raise ValueError(f"features: missing column(s) {missing}; expected, in order: {features}")
        x = model_input[features].to_numpy(dtype=np.float64)
        if not np.isfinite(x).all():
            bad = [f for f in features if not np.isfinite(model_input[f].to_numpy(dtype=np.float64)).all()]
            raise ValueError(f"features: non-finite value(s) in {bad}")
        regime = model_input["regime"].astype(str).to_numpy() if "regime" in model_input else np.full(len(x), "unknown")
        # Sequence families read the `context_rows` rows before each one; earlier rows are padded, so say so.
        warm = np.arange(len(x)) >= self.meta.get("context_rows", 0)
        # The same output either way: MC dropout (classifiers only) just adds its spread as `uncertainty`.
        uncertainty = self.meta["task"] != "regression" and params and params.get("uncertainty")
        out, spread = (
            self.forecaster.predict_with_uncertainty(x) if uncertainty else (self.forecaster.predict_proba(x), None)
        )
        frame = pd.DataFrame({**answer_columns(out, self.meta, self.meta["target"]), "regime": regime, "warm": warm})
        if spread is not None:
            frame["uncertainty"] = spread
        return frame


# Models-from-code: MLflow stores this file with the model and runs it on load, instead of unpickling an object.
mlflow.models.set_model(ItffForecastModel())
