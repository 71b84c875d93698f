"""What the fault tests share: a real lake (raw -> bronze -> silver, with one quarantined bar) and a real MLflow
registry with a promoted champion, and helpers to start, inspect and kill a real `bentoml serve`."""

import contextlib
import json
import os
import re
import signal
import time
from datetime import date, timedelta
from pathlib import Path

import httpx
import polars as pl
import pytest

import mlflow
from itff_platform.lake.delta import read_rows
from itff_platform.lake.layers import LakeTables, build_bronze, build_silver, ingest_raw
from itff_platform.market.files import FilesCandleSource
from itff_platform.market.synthetic import random_walk_candles
from itff_platform.settings import Settings
from itff_platform.training.promotion import promote_champion
from itff_platform_tests.conftest import utc
from itff_platform_tests.serving.test_service import start_service
from itff_platform_tests.training.test_promotion import train

TOKEN, ADMIN = "fault-token", "fault-admin"
QUARANTINED_BAR = 5990  # index of the candle given high < low: the lake quarantines it


def lake_settings(folder: Path) -> Settings:
    return Settings(
        home=folder,
        source="files",
        symbols=["PROMOUSDT"],
        targets=["direction"],
        trials=1,
        wf_folds=3,
        start_date=date(2024, 1, 1),
        end_date=date(2024, 10, 1),
    )


def build_lake_and_champion(folder: Path) -> tuple[Settings, pl.DataFrame]:
    """The lake of build_lake, and a promoted logistic champion."""
    settings = build_lake(folder)
    mlflow.set_tracking_uri(settings.tracking_uri)
    train(settings, ["logistic"], noise=0.2)
    assert promote_champion(settings, "PROMOUSDT", "direction").promoted
    return settings, read_rows(LakeTables.under(settings).silver, settings.interval, "PROMOUSDT")


def build_lake(folder: Path) -> Settings:
    """6,000 hourly bars (2024-01-01 .. 2024-09-06 23:00) through the files source into raw, bronze and silver,
    one of them broken (high < low) so bronze quarantines it."""
    settings = lake_settings(folder)
    settings.sources.files.drop_dir.mkdir(parents=True)
    candles = random_walk_candles(6000, seed=3)
    broken = pl.int_range(pl.len()) == QUARANTINED_BAR
    candles = candles.with_columns(high=pl.when(broken).then(pl.col("low") * 0.99).otherwise(pl.col("high")))
    candles.write_parquet(settings.sources.files.drop_dir / "PROMOUSDT-1h.parquet")
    months = [utc(2024, m, 1) for m in range(1, 10)]
    for month in months:
        ingest_raw(FilesCandleSource(settings.sources.files.drop_dir), settings, "PROMOUSDT", [month])
        build_bronze(settings, "PROMOUSDT", [month])
    build_silver(settings, "PROMOUSDT", months)
    return settings


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faults")
    settings, silver = build_lake_and_champion(folder)
    return folder, settings, silver


def serve(folder: Path, port: int | None = None, **env: str):
    """start_service with the fault tests' tokens; env overrides ITFF_* settings."""
    base = {
        "ITFF_API_TOKENS": json.dumps([TOKEN]),
        "ITFF_ADMIN_TOKEN": ADMIN,
        "ITFF_SOURCE": "files",
        "ITFF_RATE_LIMIT_BURST": "100000",
        "ITFF_RATE_LIMIT_PER_MINUTE": "10000000",
    }
    return start_service(folder, {**base, **env}, port=port)


def worker_pids(arbiter: int) -> list[int]:
    """The arbiter's children: BentoML's worker processes."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == arbiter:
                children.append(int(entry.name))
    return children


def wait_for_workers(arbiter: int, count: int, timeout: float = 120) -> list[int]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        pids = worker_pids(arbiter)
        if len(pids) >= count:
            return pids
        time.sleep(0.5)
    pytest.fail(f"the arbiter {arbiter} has {len(worker_pids(arbiter))} workers, not {count}")


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def kill9(*pids: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def metric_lines(url: str, name: str) -> list[str]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return [line for line in text.splitlines() if re.match(rf"{name}[{{ ]", line)]


def hour_iso(moment) -> str:
    return (moment - timedelta(minutes=moment.minute)).strftime("%Y-%m-%dT%H:00:00Z")
