"""What serving and monitoring (replay) share, below both: the champions and how they are looked up
(champions), the answer a prediction gets and the record it is logged as (answers), and the trading signal
rule the service, the pyfunc and the backtest apply (signals). Depends on models, manifests, rules and settings
only, so neither side has to import the other (itff_platform_tests/test_layers.py)."""
