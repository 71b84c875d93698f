"""Lorentzian-distance k-NN (models.lorentzian)."""

from itff_platform.models.registry import FamilySpec, register

register(FamilySpec("lorentzian", "classification", "itff_platform.models.lorentzian:LorentzianKNNForecaster"))
