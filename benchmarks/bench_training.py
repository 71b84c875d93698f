"""Trials per minute for every model family, on the packaged sample (BTCUSDT 1h, 30k rows, 4 folds).

    make bench-training
    ITFF_TRIALS=6 ITFF_TORCH_TRIALS=4 make bench-training

Each trial fits and scores every walk-forward fold. Results go to benchmarks/results/training.json."""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from itff_platform.features.silver import build_features
from itff_platform.market.sample import SampleCandleSource
from itff_platform.settings import Settings
from itff_platform.training.dataset import training_data
from itff_platform.training.train import train_symbol_target

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        settings = Settings(mlflow_dir=Path(scratch) / "mlflow")
        candles = SampleCandleSource().fetch(
            "BTCUSDT", "1h", datetime(2021, 1, 1, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC)
        )
        silver = build_features(candles.filter(pl.col("volume") > 0), settings).collect()
        rows = []
        for target, families in (
            ("direction", settings.training.families),
            ("forward_return", settings.training.regression_families),
        ):
            data = training_data(settings, "BTCUSDT", target, silver=silver)
            for outcome in train_symbol_target(
                settings, "BTCUSDT", target, families=families, data=data, progress=print
            ):
                trials = outcome.trials_completed + outcome.trials_pruned
                rows.append(
                    {
                        "family": outcome.family,
                        "target": target,
                        "trials": trials,
                        "pruned": outcome.trials_pruned,
                        "study_s": round(outcome.seconds, 1),
                        "trials_per_minute": round(outcome.trials_per_minute, 1),
                    }
                )
    result = {
        "machine": f"{platform.node()} | {os.cpu_count()} CPUs | {platform.machine()} | Python {sys.version.split()[0]}",
        "rows": len(silver),
        "folds": settings.training.wf_folds,
        "torch_epochs": settings.training.torch_epochs,
        "torch_max_train_rows": settings.training.torch_max_train_rows,
        "studies": rows,
    }
    out = ROOT / "benchmarks" / "results" / "training.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    with pl.Config(tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True, tbl_formatting="ASCII_MARKDOWN"):
        print(pl.DataFrame(rows))


if __name__ == "__main__":
    main()
