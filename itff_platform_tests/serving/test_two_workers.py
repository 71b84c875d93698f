"""The serving default: two worker processes, each with its own batcher, buckets and prediction-log writer,
appending to one Delta table. Every answered request must be in the log after a clean stop."""

from concurrent.futures import ThreadPoolExecutor

import httpx
import polars as pl
import pytest

import mlflow
from itff_platform.monitoring.prediction_log import prediction_log_path
from itff_platform.settings import Settings
from itff_platform.training.promotion import promote_champion
from itff_platform_tests.serving.test_service import feature_row, start_service
from itff_platform_tests.training.test_promotion import train

TOKEN = "two-workers"


@pytest.mark.timeout(300)
def test_two_workers_share_one_prediction_log_and_lose_nothing_on_stop(tmp_path):
    settings = Settings(home=tmp_path, trials=1, wf_folds=3)
    mlflow.set_tracking_uri(settings.tracking_uri)
    train(settings, ["logistic"], noise=0.2)
    assert promote_champion(settings, "PROMOUSDT", "direction").promoted
    process, url, log_file = start_service(
        tmp_path,
        {
            "ITFF_SERVE_WORKERS": "2",
            "ITFF_API_TOKENS": f'["{TOKEN}"]',
            "ITFF_RATE_LIMIT_BURST": "10000",
            "ITFF_RATE_LIMIT_PER_MINUTE": "100000",
            "ITFF_PREDICTION_LOG_FLUSH_ROWS": "25",
            "ITFF_PREDICTION_LOG_FLUSH_S": "3600",
        },
    )
    body = {"symbol": "PROMOUSDT", "features": feature_row(settings)}

    def ask(_):  # a fresh connection each: the kernel spreads them over both workers
        return httpx.post(f"{url}/predict", json=body, headers={"X-API-Token": TOKEN}, timeout=30).json()["request_id"]

    try:
        with ThreadPoolExecutor(8) as pool:
            asked = list(pool.map(ask, range(120)))
    finally:
        process.terminate()
        process.wait(timeout=60)
        log_file.close()
    log = pl.read_delta(str(prediction_log_path(settings)))
    assert sorted(log["request_id"].to_list()) == sorted(asked)  # each once: none lost, none doubled
