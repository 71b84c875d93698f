"""`python -m itff_platform.cluster`: the cluster profile's settings as shell assignments, for scripts/cluster.sh
(the script reads them, as dev.sh reads registry_paths, instead of parsing URLs in bash)."""

import shlex
from urllib.parse import urlsplit

from itff_platform.settings import get_settings, redact_uri


def shell_assignments() -> str:
    settings = get_settings()
    cluster = settings.cluster
    mlflow = urlsplit(cluster.mlflow_server_url)
    values = {
        "CLUSTER_DIR": cluster.cluster_dir,
        "CLUSTER_DAGSTER_PORT": cluster.dagster_port,
        "CLUSTER_WORKERS": cluster.workers,
        "CLUSTER_REDIS_URL": cluster.redis_url,
        "CLUSTER_MLFLOW_URL": cluster.mlflow_server_url,
        # For the banner: a password in a URL comes from the environment and is never printed.
        "CLUSTER_REDIS_SHOWN": redact_uri(cluster.redis_url),
        "CLUSTER_MLFLOW_SHOWN": redact_uri(cluster.mlflow_server_url),
        "CLUSTER_MLFLOW_HOST": mlflow.hostname or "127.0.0.1",
        "CLUSTER_MLFLOW_PORT": mlflow.port or 80,
        "DAGSTER_POSTGRES_URL": settings.postgres_database("dagster", driver="psycopg2"),
        "CLUSTER_MLFLOW_BACKEND": settings.postgres_database("mlflow", driver="psycopg2"),
    }
    return "\n".join(f"{name}={shlex.quote(str(value))}" for name, value in values.items())


if __name__ == "__main__":
    print(shell_assignments())
