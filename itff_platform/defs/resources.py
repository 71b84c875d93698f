"""Dagster resources: where the lake lives and where candles come from, built from the one Settings."""

from __future__ import annotations

from typing import Any

from dagster import ConfigurableResource

from itff_platform.settings import Settings


class ItffSettingsResource(ConfigurableResource):
    """Overrides on top of the environment's Settings (ITFF_*); tests point the lake at a temp dir here."""

    lake_dir: str | None = None
    source: str | None = None
    drop_dir: str | None = None
    trials: int | None = None  # the daily retrain and drift retrains run on a smaller budget
    torch_trials: int | None = None
    evaluation_as_of: str | None = None  # ISO time the monitoring assets evaluate at (replay); default now
    monitoring_dir: str | None = None  # replay keeps its prediction log, decisions and reports apart from live ones
    reports_dir: str | None = None

    def settings(self) -> Settings:
        overrides: dict[str, Any] = {
            k: v
            for k, v in {
                "lake_dir": self.lake_dir,
                "source": self.source,
                "drop_dir": self.drop_dir,
                "trials": self.trials,
                "torch_trials": self.torch_trials,
                "monitoring_dir": self.monitoring_dir,
                "reports_dir": self.reports_dir,
            }.items()
            if v
        }
        return Settings(**overrides) if overrides else Settings()

    def candle_source(self):
        from itff_platform.market import candle_source

        return candle_source(self.settings())
