"""The BentoML service. For now it reports liveness and which lake tables it can see;
the serving issue adds /predict, /consensus and /tradingview to this class."""

from __future__ import annotations

import bentoml

from itff_platform.settings import get_settings


@bentoml.service(name="itff-prediction-service", traffic={"timeout": 10})
class ItffService:
    def __init__(self) -> None:
        self.settings = get_settings()

    @bentoml.api(route="/healthz")
    def healthz(self) -> dict:
        from itff_platform.lake.layers import LakeTables

        return {"status": "ok", "lake_table_versions": LakeTables.under(self.settings).versions()}
