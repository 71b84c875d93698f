"""What scripts/cluster.sh reads from the settings (python -m itff_platform.cluster)."""

import shlex
from pathlib import Path

from itff_platform.cluster.__main__ import shell_assignments
from itff_platform.settings import get_settings


def test_make_cluster_reads_urls_with_the_drivers_its_servers_need(monkeypatch, tmp_path):
    monkeypatch.setenv("ITFF_HOME", str(tmp_path))
    monkeypatch.setenv("ITFF_POSTGRES_URL", "postgresql://itff@127.0.0.1:6543")
    monkeypatch.setenv("ITFF_MLFLOW_SERVER_URL", "http://127.0.0.1:5151")
    get_settings.cache_clear()
    try:
        values = dict(line.split("=", 1) for line in shlex.split(shell_assignments().replace("\n", " ")))
    finally:
        get_settings.cache_clear()
    # dagster-postgres needs psycopg2: under psycopg 3 (SQLAlchemy 2.1's default) its NOTIFY fails in the daemon.
    assert values["DAGSTER_POSTGRES_URL"] == "postgresql+psycopg2://itff@127.0.0.1:6543/dagster"
    assert values["CLUSTER_MLFLOW_BACKEND"] == "postgresql+psycopg2://itff@127.0.0.1:6543/mlflow"
    assert (values["CLUSTER_MLFLOW_HOST"], values["CLUSTER_MLFLOW_PORT"]) == ("127.0.0.1", "5151")
    assert values["CLUSTER_DIR"] == str(tmp_path / ".cluster")
    assert (values["CLUSTER_DAGSTER_PORT"], values["CLUSTER_WORKERS"]) == ("3301", "2")


def test_the_cluster_profile_moves_the_stores_and_embedded_keeps_them(tmp_path):
    from itff_platform.settings import Settings

    embedded = Settings(home=tmp_path)
    assert embedded.tracking_uri == f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    assert embedded.study_storage == f"sqlite:///{tmp_path / 'mlflow' / 'optuna.db'}"
    assert embedded.artifact_location == (tmp_path / "mlflow" / "artifacts").as_uri()
    cluster = Settings(home=tmp_path, profile="cluster")
    assert cluster.tracking_uri == "http://127.0.0.1:5050" and cluster.artifact_location is None
    assert cluster.study_storage == "postgresql+psycopg://itff@127.0.0.1:55432/optuna"
    explicit = Settings(home=tmp_path, profile="cluster", optuna_storage="sqlite:///x.db", mlflow_tracking_uri="y")
    assert (explicit.study_storage, explicit.tracking_uri) == ("sqlite:///x.db", "y")


def test_the_cluster_instance_yaml_is_valid_and_limits_runs_per_symbol(tmp_path, monkeypatch):
    """deploy/native/dagster.yaml against Dagster's instance schema (no server needed), and its queue's limits."""
    import shutil
    from pathlib import Path

    from dagster._core.instance.config import dagster_instance_config

    shutil.copy(Path(__file__).resolve().parents[2] / "deploy" / "native" / "dagster.yaml", tmp_path)
    monkeypatch.setenv("DAGSTER_POSTGRES_URL", "postgresql+psycopg2://itff@127.0.0.1:1/dagster")
    config, _ = dagster_instance_config(str(tmp_path))
    assert config["storage"]["postgres"]["postgres_url"] == {"env": "DAGSTER_POSTGRES_URL"}
    runs = config["concurrency"]["runs"]
    assert runs["tag_concurrency_limits"] == [
        {"key": "dagster/partition/symbol", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
    ]
    assert config["run_retries"]["enabled"] and config["run_retries"]["max_retries"] == 2


def test_passwords_in_the_cluster_urls_are_never_shown(monkeypatch, tmp_path):
    """`itff settings`, the make cluster banner and `itff cluster up` show the URLs with the password hidden; the
    password itself comes from the environment. They were printed whole."""
    monkeypatch.setenv("ITFF_HOME", str(tmp_path))
    monkeypatch.setenv("ITFF_POSTGRES_URL", "postgresql://itff:pg-secret@db:5432")
    monkeypatch.setenv("ITFF_REDIS_URL", "redis://:redis-secret@cache:6379/0")
    monkeypatch.setenv("ITFF_MLFLOW_SERVER_URL", "http://ml:ml-secret@mlflow:5050")
    get_settings.cache_clear()
    try:
        shown = get_settings().for_display()["cluster"]
        values = dict(line.split("=", 1) for line in shlex.split(shell_assignments().replace("\n", " ")))
    finally:
        get_settings.cache_clear()
    assert "secret" not in str(shown), shown
    assert shown["postgres_url"] == "postgresql://itff:***@db:5432"
    assert "secret" not in values["CLUSTER_REDIS_SHOWN"] + values["CLUSTER_MLFLOW_SHOWN"]
    banner = (Path(__file__).parents[2] / "scripts" / "cluster.sh").read_text()
    assert "$CLUSTER_REDIS_URL" not in banner.split("banner()")[1].split("}")[0]
