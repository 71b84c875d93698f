"""The ITFF Platform: a Delta lake of market candles, walk-forward training and a prediction service."""
