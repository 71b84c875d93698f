"""The reference points every study is judged against (models.baselines)."""

from typing import Any

from itff_platform.models.registry import FamilySpec, register


def _last_return_column(features: list[str]) -> dict[str, Any]:
    return {"last_return_column": features.index("log_return_1")}


register(
    FamilySpec(
        "baseline_majority", "classification", "itff_platform.models.baselines:MajorityForecaster", baseline=True
    ),
    FamilySpec(
        "baseline_persistence",
        "classification",
        "itff_platform.models.baselines:PersistenceForecaster",
        baseline=True,
        data_params=_last_return_column,
    ),
    FamilySpec(
        "baseline_climatology",
        "regression",
        "itff_platform.models.baselines:ClimatologyForecaster",
        baseline=True,
        uncertainty="bands",
    ),
)
