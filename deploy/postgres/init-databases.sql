-- One Postgres server, one database per store of the cluster profile (ClusterSettings.postgres_url):
-- dagster (runs, event logs, schedules), mlflow (runs and the model registry), optuna (studies and trials).
-- The postgres image runs this once, on an empty data volume, as POSTGRES_USER, who then owns all three.
CREATE DATABASE dagster;
CREATE DATABASE mlflow;
CREATE DATABASE optuna;
