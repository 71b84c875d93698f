"""The torch sequence families (models.sequence): named, not imported, so reading the registry skips torch."""

from itff_platform.models.registry import FamilySpec, register

register(
    FamilySpec(
        "lstm", "classification", "itff_platform.models.sequence:LSTMForecaster", torch=True, uncertainty="mc_dropout"
    ),
    FamilySpec(
        "transformer",
        "classification",
        "itff_platform.models.sequence:TransformerForecaster",
        torch=True,
        uncertainty="mc_dropout",
    ),
)
