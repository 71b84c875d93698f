"""The scikit-learn families (models.tabular): two classifiers and two quantile regressors."""

from itff_platform.models.registry import FamilySpec, register

register(
    FamilySpec("logistic", "classification", "itff_platform.models.tabular:LogisticForecaster"),
    FamilySpec("boosting", "classification", "itff_platform.models.tabular:BoostingForecaster"),
    FamilySpec(
        "boosting_quantile",
        "regression",
        "itff_platform.models.tabular:BoostingQuantileForecaster",
        uncertainty="bands",
    ),
    FamilySpec(
        "linear_quantile", "regression", "itff_platform.models.tabular:LinearQuantileForecaster", uncertainty="bands"
    ),
)
