"""A real Postgres and a real Redis for the session, started and stopped by itff_platform.cluster as `make cluster`
does, in a folder of their own."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from itff_platform.cluster import postgres, redis
from itff_platform_tests.conftest import free_port


@pytest.fixture(scope="session")
def servers():
    """{"postgres": url, "redis": url, "dir": folder}. The folder is outside pytest's (root-only) temp folder: as
    root, the server runs as the postgres user, who must reach its data directory."""
    folder = Path(tempfile.mkdtemp(prefix="itff-cluster-"))
    os.chmod(folder, 0o755)
    urls = {
        "postgres": f"postgresql://itff@127.0.0.1:{free_port()}",
        "redis": f"redis://127.0.0.1:{free_port()}/0",
        "dir": folder,
    }
    postgres.start(folder / "pg", urls["postgres"], durable=False)
    try:
        redis.start(folder / "redis", urls["redis"])
        yield urls
    finally:
        redis.stop(folder / "redis")
        postgres.stop(folder / "pg", mode="immediate")
        shutil.rmtree(folder, ignore_errors=True)
