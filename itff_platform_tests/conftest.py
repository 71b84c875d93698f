import warnings
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from itff_platform.local_http import free_port  # noqa: F401  (re-exported for the tests)
from itff_platform.market.sample import SampleCandleSource
from itff_platform.market.synthetic import random_walk_candles  # noqa: F401  (re-exported for the tests)
from itff_platform.settings import Settings

warnings.filterwarnings("ignore", message=".*is currently in beta.*")

UTC = UTC


def model_files(client, name: str, version: str) -> Path:
    """Where the registry keeps a version's files (its logged model's artifact location): what a tampering test edits."""
    source = client.get_model_version(name, version).source  # "models:/m-<id>" in MLflow 3
    return Path(client.get_logged_model(source.rsplit("/", 1)[-1]).artifact_location.removeprefix("file://"))


def markdown_rows(text: str) -> list[list[str]]:
    """A Markdown table's data rows (itff_platform.markdown.table), each cell stripped of its padding."""
    lines = [line for line in text.splitlines() if line.startswith("|")][2:]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def utc(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)


@pytest.fixture
def settings(tmp_path) -> Settings:
    return Settings(home=tmp_path, lake_dir=tmp_path / "lake", drop_dir=tmp_path / "drop")


@pytest.fixture(scope="session")
def btc_hourly() -> pl.DataFrame:
    """The packaged real sample, as the source returns it."""
    return SampleCandleSource().fetch("BTCUSDT", "1h", utc(2021, 1, 1), utc(2025, 1, 1))
