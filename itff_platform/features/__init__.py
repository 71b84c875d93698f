"""Features as polars expressions: indicators, regimes, labels and the silver frame builder."""
