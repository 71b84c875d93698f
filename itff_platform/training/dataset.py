"""What a study trains on: one symbol's silver rows, the feature matrix in a fixed order, one target."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np
import polars as pl

from itff_platform.features.silver import feature_columns
from itff_platform.lake.delta import read_rows
from itff_platform.lake.layers import LakeTables
from itff_platform.rules import task_of
from itff_platform.settings import Settings

TARGET_COLUMNS = {"direction": "direction", "level_up": "level_up", "forward_return": "forward_return"}


@dataclass(frozen=True)
class TrainingData:
    symbol: str
    target: str
    features: list[str]
    x: np.ndarray
    y: np.ndarray
    timestamps: np.ndarray
    regimes: np.ndarray
    forward_return: np.ndarray
    close: np.ndarray
    table_versions: dict[str, int | None]

    @property
    def task(self) -> str:
        return task_of(self.target)

    def __len__(self) -> int:
        return len(self.y)


def training_data(
    settings: Settings, symbol: str, target: str, as_of: datetime | None = None, silver: pl.DataFrame | None = None
) -> TrainingData:
    """Rows with every feature and the label defined, up to `as_of`; records the Delta versions read."""
    if target not in TARGET_COLUMNS:
        raise ValueError(f"target: {target!r} is not one of {sorted(TARGET_COLUMNS)}")
    tables = LakeTables.under(settings)
    versions = tables.versions() if silver is None else {}
    if silver is None:
        silver = read_rows(tables.silver, settings.interval, symbol)
    features = feature_columns(settings)
    if as_of is not None:
        # The label at t is known once bar t+h closes, at t + (h+1) bars: only such rows may train a model as of then.
        known_by = pl.col("timestamp") + pl.duration(
            seconds=(settings.features.label_horizon + 1) * settings.interval_seconds
        )
        silver = silver.filter(known_by <= as_of)
    usable = silver.drop_nulls([*features, TARGET_COLUMNS[target], "forward_return"]).filter(
        pl.all_horizontal(pl.col(features).is_finite())
    )
    if usable.height < 500:
        raise ValueError(
            f"{symbol} {target}: only {usable.height} complete silver rows; materialize silver_features first"
        )
    return TrainingData(
        symbol=symbol,
        target=target,
        features=features,
        x=usable.select(features).to_numpy().astype(np.float64),
        y=usable[TARGET_COLUMNS[target]].to_numpy().astype(np.float64 if target == "forward_return" else np.int64),
        timestamps=usable["timestamp"].to_numpy(),
        regimes=usable["regime"].to_numpy(),
        forward_return=usable["forward_return"].to_numpy(),
        close=usable["close"].to_numpy(),
        table_versions={k: v for k, v in versions.items() if k in ("bronze", "silver")},
    )
