"""The ITFF Platform: a Delta lake of market candles, walk-forward training and a prediction service."""

import os

# OpenMP (torch's, scikit-learn's boosting) reads its wait policy once, when it loads. Spinning threads keep a core
# busy while they wait, and with that core held by other work (the other trial, a service worker) a boosting fit
# took 55 s and 14 CPU-s instead of 12 s and 4 (docs/training-and-promotion.md). Every entry point (itff, Dagster's
# code location, bentoml serve, study workers) imports this package before any library that loads OpenMP, so the
# default is set here; the Makefile exports it too, for the processes make starts. An explicit value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
