"""Walk-forward training: splits, the Optuna search, evaluation, MLflow tracking, registry and promotion."""
