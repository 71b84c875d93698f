"""An unreachable Postgres or Redis is one line naming the setting and the host, from the package and the CLI."""

import pytest

from itff_platform.cluster import postgres
from itff_platform.cluster.preflight import Unreachable, preflight
from itff_platform.settings import Settings
from itff_platform_tests.conftest import free_port
from itff_platform_tests.test_cli_errors import itff


def test_unreachable_postgres_then_redis_name_their_setting_and_host(servers, tmp_path):
    dead = free_port()
    with pytest.raises(Unreachable, match=rf"^ITFF_POSTGRES_URL: nothing answers at 127\.0\.0\.1:{dead} "):
        preflight(Settings(home=tmp_path, profile="cluster", postgres_url=f"postgresql://itff@127.0.0.1:{dead}"))
    with pytest.raises(Unreachable, match=rf"^ITFF_REDIS_URL: nothing answers at 127\.0\.0\.1:{dead} "):
        preflight(
            Settings(
                home=tmp_path,
                profile="cluster",
                postgres_url=servers["postgres"],
                redis_url=f"redis://127.0.0.1:{dead}/0",
            )
        )
    preflight(Settings(home=tmp_path, profile="cluster", postgres_url=servers["postgres"], redis_url=servers["redis"]))


def test_the_cli_says_it_in_one_line_without_a_traceback(tmp_path):
    dead = free_port()
    env = {
        "ITFF_HOME": str(tmp_path),
        "DAGSTER_HOME": str(tmp_path),
        "ITFF_PROFILE": "cluster",
        "ITFF_POSTGRES_URL": f"postgresql://itff@127.0.0.1:{dead}",
    }
    for command in (["cluster", "check"], ["run", "--lake-only"]):
        result = itff(*command, env=env, cwd=tmp_path)
        assert result.returncode == 1
        assert "Traceback" not in result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and f"ITFF_POSTGRES_URL: nothing answers at 127.0.0.1:{dead}" in lines[0], result.stderr


def test_databases_are_created_once(servers):
    postgres.create_databases(servers["postgres"])  # again: no error, nothing new
    import psycopg

    with psycopg.connect(f"{servers['postgres']}/postgres") as connection:
        names = {row[0] for row in connection.execute("SELECT datname FROM pg_database")}
    assert set(postgres.DATABASES) <= names
