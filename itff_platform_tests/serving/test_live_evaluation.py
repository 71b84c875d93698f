"""Live evaluation sees what the service answers: a real `bentoml serve` over a real lake and registry.

Feature rows sent with their bar's time are logged with it and evaluated; the regime is the lake's (or a
validated name); every answer says how old its model is and whether it may be traded."""

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import polars as pl
import pytest

import mlflow
from itff_platform.features.silver import feature_columns
from itff_platform.lake.delta import read_rows
from itff_platform.lake.layers import LakeTables, build_bronze, build_silver, ingest_raw
from itff_platform.market.files import FilesCandleSource
from itff_platform.market.synthetic import random_walk_candles
from itff_platform.rules import REGIMES
from itff_platform.settings import Settings
from itff_platform.training.promotion import promote_champion, write_manifest
from itff_platform_tests.conftest import model_files, utc
from itff_platform_tests.faults.conftest import lake_settings
from itff_platform_tests.serving.test_service import start_service
from itff_platform_tests.training.test_promotion import NAME, train
from mlflow import MlflowClient

TOKEN, ADMIN = "live-token", "live-admin"
MAX_AGE_DAYS = 20
SERVER: dict = {}
ASKED: dict[str, str] = {}  # request id -> the bar_time it was asked about (or "none")


def build_lake(settings: Settings) -> pl.DataFrame:
    """A synthetic walk through the files source into raw, bronze and silver: it runs past the champion's
    training data (the first 5000 bars of the same kind of walk), so bars after trained_through exist."""
    settings.sources.files.drop_dir.mkdir(parents=True)
    random_walk_candles(6000, seed=3).write_parquet(settings.sources.files.drop_dir / "PROMOUSDT-1h.parquet")
    months = [utc(2024, m, 1) for m in range(1, 10)]
    for month in months:
        ingest_raw(FilesCandleSource(settings.sources.files.drop_dir), settings, "PROMOUSDT", [month])
        build_bronze(settings, "PROMOUSDT", [month])
    build_silver(settings, "PROMOUSDT", months)
    return read_rows(LakeTables.under(settings).silver, settings.interval, "PROMOUSDT")


def trained_through(settings: Settings, version: str) -> datetime:
    meta = json.loads(meta_path(settings, version).read_text())
    return datetime.fromisoformat(meta["trained_through"][:19]).replace(tzinfo=UTC)


def meta_path(settings: Settings, version: str) -> Path:
    return model_files(MlflowClient(settings.tracking_uri), NAME, version) / "artifacts" / "forecaster" / "meta.json"


def lake_and_champion(folder: Path) -> tuple[Settings, pl.DataFrame, str]:
    """A lake running past a promoted champion's training data, under `folder`: settings, silver, champion version."""
    settings = lake_settings(folder)
    silver = build_lake(settings)
    mlflow.set_tracking_uri(settings.tracking_uri)
    train(settings, ["logistic"], noise=0.2)
    decision = promote_champion(settings, "PROMOUSDT", "direction")
    assert decision.promoted
    return settings, silver, decision.challenger


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    folder = tmp_path_factory.mktemp("live")
    settings, silver, version = lake_and_champion(folder)
    process, url, log_file = start_service(
        folder,
        {
            "ITFF_API_TOKENS": json.dumps([TOKEN]),
            "ITFF_ADMIN_TOKEN": ADMIN,
            "ITFF_SERVE_WORKERS": "1",
            "ITFF_MODEL_MAX_AGE_DAYS": str(MAX_AGE_DAYS),
            "ITFF_PREDICTION_LOG_FLUSH_S": "3600",
            "ITFF_PREDICTION_LOG_FLUSH_ROWS": "1000000",
        },
    )
    SERVER["process"] = process
    yield url, settings, silver, trained_through(settings, version)
    process.terminate()
    process.wait(timeout=30)
    log_file.close()


def post(url, path, body, token=TOKEN):
    return httpx.post(f"{url}{path}", json=body, headers={"X-API-Token": token}, timeout=30)


def bar(silver: pl.DataFrame, at: datetime) -> dict:
    return silver.filter(pl.col("timestamp") == at).row(0, named=True)


def features(row: dict, settings: Settings) -> dict:
    return {name: row[name] for name in feature_columns(settings)}


def hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def test_a_feature_row_with_its_bar_time_gets_the_lakes_regime_and_the_models_age(live):
    url, settings, silver, through = live
    at = hour(through + timedelta(days=10))
    row = bar(silver, at)
    claimed = next(r for r in REGIMES if r != row["regime"])  # the lake knows better than the client
    body = {
        "symbol": "PROMOUSDT",
        "features": features(row, settings),
        "regime": claimed,
        "bar_time": at.replace(tzinfo=None).isoformat(),
    }  # no timezone: read as UTC
    answer = post(url, "/predict", body)
    assert answer.status_code == 200, answer.text
    served = answer.json()
    assert served["bar_time"] == at.isoformat() and served["regime"] == row["regime"]
    assert served["model_age_days"] == pytest.approx((at - through).total_seconds() / 86400, abs=1e-3)
    assert served["expired"] is False and served["tradable"] is True and "significant edge" in served["tradable_reason"]
    ASKED[served["request_id"]] = at.isoformat()

    later = hour(through + timedelta(days=MAX_AGE_DAYS + 5))
    stale = post(
        url, "/predict", body | {"features": features(bar(silver, later), settings), "bar_time": later.isoformat()}
    )
    assert stale.status_code == 200 and stale.json()["expired"] is True  # still answered, flagged
    assert stale.json()["model_age_days"] == pytest.approx(MAX_AGE_DAYS + 5, abs=1)
    ASKED[stale.json()["request_id"]] = later.isoformat()

    undated = post(
        url, "/predict", {"symbol": "PROMOUSDT", "features": features(row, settings), "regime": "neutral"}
    ).json()
    age_now = (datetime.now(UTC) - through).total_seconds() / 86400
    assert (
        undated["bar_time"] is None and undated["regime"] == "neutral"
    )  # the lake cannot say: the client's, validated
    assert undated["model_age_days"] == pytest.approx(age_now, abs=0.01) and undated["expired"] is True
    ASKED[undated["request_id"]] = "none"


@pytest.mark.parametrize(
    "bar_time, message",
    [
        ("yesterday", "bar_time: 'yesterday' is not an ISO-8601 time"),
        ("2024-08-10T12:34:00Z", "is not on a 1h bar boundary"),
        ((datetime.now(UTC) + timedelta(days=2)).strftime("%Y-%m-%dT%H:00:00Z"), "is in the future"),
    ],
)
def test_a_bad_bar_time_gets_a_400_naming_the_field_and_the_rule(live, bar_time, message):
    url, settings, silver, _ = live
    answer = post(
        url,
        "/predict",
        {"symbol": "PROMOUSDT", "features": features(silver.row(-1, named=True), settings), "bar_time": bar_time},
    )
    assert answer.status_code == 400 and message in answer.text, answer.text


def test_a_regime_outside_the_six_names_is_refused_and_never_becomes_a_metric_label(live):
    url, settings, silver, _ = live
    row = features(silver.row(-1, named=True), settings)
    refused = post(url, "/predict", {"symbol": "PROMOUSDT", "features": row, "regime": "to-the-moon"})
    assert refused.status_code == 400 and "regime: 'to-the-moon' is not one of" in refused.text
    assert post(url, "/predict", {"symbol": "PROMOUSDT", "features": row}).json()["regime"] == "unknown"
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    labels = {
        line.split('regime="')[1].split('"')[0]
        for line in metrics.splitlines()
        if line.startswith("itff_predictions_total{") and 'regime="' in line
    }
    assert "to-the-moon" not in metrics and labels and labels <= set(REGIMES)


def test_tradingview_and_consensus_carry_the_models_age_as_of_the_bar(live):
    url, settings, silver, through = live
    at = hour(through + timedelta(days=3))
    alert = post(
        url,
        f"/tradingview?token={TOKEN}",
        {
            "ticker": "BINANCE:PROMOUSDT",
            "close": bar(silver, at)["close"],
            "time": at.isoformat().replace("+00:00", "Z"),
        },
    )
    assert alert.status_code == 200, alert.text
    assert alert.json()["model_age_days"] == pytest.approx(3, abs=1e-3) and alert.json()["expired"] is False
    vote = post(
        url,
        "/consensus",
        {"symbol": "PROMOUSDT", "features": features(bar(silver, at), settings), "bar_time": at.isoformat()},
    )
    assert vote.status_code == 200, vote.text
    body = vote.json()
    assert body["regime"] == bar(silver, at)["regime"] and body["bar_time"] == at.isoformat()
    assert (
        body["model_age_days"] == pytest.approx(3, abs=1e-3) and body["expired"] is False and body["tradable"] is True
    )
    assert all("model_age_days" in member and "tradable" in member for member in body["families"])


def test_an_alert_after_the_lakes_newest_bar_or_far_from_its_close_is_refused(live):
    """ITFF_TRADINGVIEW_STALE defaults to refuse: an alert is never answered from an older bar without saying so."""
    url, _settings, silver, _ = live
    newest = silver.row(-1, named=True)
    alert = {"ticker": "BINANCE:PROMOUSDT", "close": newest["close"], "time": newest["timestamp"].isoformat()}
    assert post(url, f"/tradingview?token={TOKEN}", alert).status_code == 200
    later = alert | {"time": (newest["timestamp"] + timedelta(hours=47)).isoformat()}
    stale = post(url, f"/tradingview?token={TOKEN}", later)
    assert stale.status_code == 400 and "is 47 bar(s) older than the alert's" in stale.text, stale.text
    for wrong in (99999.0, -1.0, newest["close"] * 1.05):
        refused = post(url, f"/tradingview?token={TOKEN}", alert | {"close": wrong})
        assert refused.status_code == 400 and refused.json()["field"] == "close", refused.text


def test_a_champion_whose_rule_is_not_tradable_answers_flat_and_says_why(live):
    url, settings, silver, through = live
    client = MlflowClient(settings.tracking_uri)
    train(settings, ["logistic"], noise=0.05)
    challenger = str(max(int(v.version) for v in client.search_model_versions(f"name = '{NAME}'")))
    meta = json.loads(meta_path(settings, challenger).read_text())
    reason = "profit factor 1.02 on 31 trades: no edge at 95 %"
    # Rewritten as training would have written it: with the manifest registration writes over it, so the service
    # verifies it.
    meta_path(settings, challenger).write_text(json.dumps(meta | {"tradable": False, "tradable_reason": reason}))
    write_manifest(client, NAME, challenger)
    assert promote_champion(settings, "PROMOUSDT", "direction").promoted
    assert post(url, "/admin/reload", {}, token=ADMIN).json()["models"][NAME]["serving_version"] == challenger

    # Bars with known outcomes, within one live-quality window of the others asked about.
    rows = silver.filter(pl.col("timestamp").is_between(through + timedelta(days=12), through + timedelta(days=20)))
    batch = post(
        url, "/predict_batch", {"symbol": "PROMOUSDT", "rows": rows.select(feature_columns(settings)).rows()}
    ).json()
    assert batch["tradable"] is False and batch["tradable_reason"] == reason and set(batch["signal"]) == {"flat"}
    threshold = batch["threshold"]
    confident = next(i for i, p in enumerate(batch["prob_up"]) if p >= threshold or p <= 1 - threshold)
    row = rows.row(confident, named=True)
    answer = post(
        url,
        "/predict",
        {"symbol": "PROMOUSDT", "features": features(row, settings), "bar_time": row["timestamp"].isoformat()},
    ).json()
    assert answer["model_version"] == challenger and max(answer["prob_up"], 1 - answer["prob_up"]) >= threshold
    assert (answer["signal"], answer["allow"], answer["tradable"], answer["tradable_reason"]) == (
        "flat",
        False,
        False,
        reason,
    )
    ASKED[answer["request_id"]] = row["timestamp"].isoformat()
    vote = post(url, "/consensus", {"symbol": "PROMOUSDT", "features": features(row, settings)}).json()
    assert vote["signal"] == "flat" and vote["tradable"] is False and vote["tradable_reason"] == reason


def test_zz_feature_rows_with_a_bar_time_are_evaluated_once_the_service_has_stopped(live):
    """Runs last: stopping the server flushes the log, which prediction_outcomes then joins with the lake."""
    from itff_platform.monitoring.outcomes import realized_from_lake
    from itff_platform.monitoring.prediction_log import read_prediction_log
    from itff_platform.monitoring.quality import live_quality_for

    _, settings, silver, _ = live
    SERVER["process"].terminate()
    SERVER["process"].wait(timeout=60)
    log = read_prediction_log(settings).filter(pl.col("request_id").is_in(list(ASKED)))
    assert log.height == len(ASKED) == 4
    realized, _ = realized_from_lake(settings, log)
    dated = {rid for rid, at in ASKED.items() if at != "none"}
    assert set(realized["request_id"]) == dated  # every dated row is evaluated; the undated one cannot be
    for row in realized.iter_rows(named=True):
        truth = bar(silver, row["bar_time"])
        assert row["label"] == truth["direction"] and row["forward_return"] == truth["forward_return"]
    as_of = realized["bar_time"].max() + timedelta(days=1)
    quality = live_quality_for(settings, realized, as_of).filter(pl.col("scope") == "all")
    assert quality["n"].sum() == len(dated) and quality["model_version"].n_unique() == 2
    assert quality["backtest_hit_rate_trades"].is_not_null().all()  # each version beside its own backtest
