"""One module per group of model families; each registers its FamilySpecs at import (see models.registry).
A module here must stay cheap to import: it names its Forecaster class as "module:Class" when that class
needs torch."""
