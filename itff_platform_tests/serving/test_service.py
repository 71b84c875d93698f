"""The real service: `bentoml serve` as a subprocess on a free loopback port, spoken to over HTTP."""

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest

import mlflow
from itff_platform.local_http import answers
from itff_platform.market.sample import SampleCandleSource
from itff_platform.serving.online import minimum_candles
from itff_platform.settings import Settings
from itff_platform.training.promotion import promote_champion
from itff_platform_tests.conftest import free_port, model_files, utc
from itff_platform_tests.training.test_promotion import train
from mlflow import MlflowClient

ROOT = Path(__file__).resolve().parents[2]
TOKEN, ADMIN = "test-token-1", "admin-token-1"
SERVER: dict = {}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serving")
    settings = promoted_registry(folder)
    env = {
        "ITFF_API_TOKENS": json.dumps([TOKEN, "other-token"]),
        "ITFF_ADMIN_TOKEN": ADMIN,
        "ITFF_RATE_LIMIT_BURST": "40",
        "ITFF_RATE_LIMIT_PER_MINUTE": "60",
        "ITFF_SERVE_WORKERS": "1",
        "ITFF_TRADINGVIEW_SECRET": "tv-secret",
        # Nothing is written while the tests run: the last test proves the shutdown flush writes it all.
        "ITFF_PREDICTION_LOG_FLUSH_S": "3600",
        "ITFF_PREDICTION_LOG_FLUSH_ROWS": "1000000",
    }
    process, url, log_file = start_service(folder, env)
    SERVER["process"] = process
    yield url, settings
    process.terminate()
    process.wait(timeout=30)
    log_file.close()


def promoted_registry(folder: Path) -> Settings:
    """An MLflow registry under `folder` whose PROMOUSDT direction model (logistic, one trial) has a champion."""
    settings = Settings(home=folder, trials=1, wf_folds=3)
    mlflow.set_tracking_uri(settings.tracking_uri)
    train(settings, ["logistic"], noise=0.2)
    assert promote_champion(settings, "PROMOUSDT", "direction").promoted
    return settings


def start_service(folder: Path, extra_env: dict[str, str], port: int | None = None, code: Path = ROOT):
    """`bentoml serve` on a (free) loopback port over the registry under `folder`; returns once it answers.
    `code`: the folder whose itff_platform it serves (a scratch copy, in the docs' recipe tests)."""
    port = port or free_port()
    # Not inherited: mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI, which would hide a service
    # that forgot to point MLflow at its own store.
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env = {
        **inherited,
        "ITFF_HOME": str(folder),
        "ITFF_SYMBOLS": '["PROMOUSDT"]',
        "ITFF_TARGETS": '["direction"]',
        "ITFF_RELOAD_INTERVAL_S": "0",
        "ITFF_MAX_REQUEST_BYTES": "500000",
        "BENTOML_HOME": str(folder / "bentoml" / str(port)),
        **extra_env,
    }
    # To a file, not a pipe: nobody drains a pipe during the tests, and a full one blocks the server.
    log_path = folder / "bentoml-serve.log"
    log_file = open(log_path, "w")  # noqa: SIM115  (the server writes it after this returns)
    process = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "bentoml"),
            "serve",
            "itff_platform.serving.service:ItffService",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=code,
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    # 503 is an answer too: a service up with a model refused (the tests of refusals start one).
    if answers(f"{url}/readyz", process, timeout_s=120, statuses=(200, 503), interval_s=1):
        return process, url, log_file
    process.kill()
    pytest.fail("bentoml serve did not start:\n" + log_path.read_text()[-3000:])


def post(url, path, body, token=TOKEN, **kwargs):
    headers = {"X-API-Token": token} if token else {}
    return httpx.post(f"{url}{path}", json=body, headers=headers, timeout=30, **kwargs)


def feature_row(settings):
    """A row from the distribution the test champions were trained on (the synthetic walk in test_promotion)."""
    return feature_rows(settings, 1)[0]


def feature_rows(settings, n):
    """The last `n` rows of that walk."""
    from itff_platform.features.silver import build_features, feature_columns
    from itff_platform.market.synthetic import random_walk_candles

    frame = build_features(random_walk_candles(5000, seed=3), settings).collect().select(feature_columns(settings))
    return frame.tail(n).to_dicts()


def test_ready_once_every_champion_is_loaded_and_verified(service):
    url, settings = service
    probe = httpx.get(f"{url}/readyz", timeout=10)  # BentoML's own probe asks __is_ready__, and says nothing more
    assert probe.status_code == 200 and "itff-" not in probe.text
    assert httpx.post(f"{url}/readyz", json={}, timeout=10).status_code == 405  # GET only: no POST twin
    ready = httpx.get(f"{url}/readyz", headers={"X-API-Token": TOKEN}, timeout=10)  # with a token: the details
    assert ready.status_code == 200 and ready.json()["ready"] is True
    champion = str(
        MlflowClient(settings.tracking_uri).get_model_version_by_alias("itff-PROMOUSDT-direction", "champion").version
    )
    assert ready.json()["models"]["itff-PROMOUSDT-direction"]["serving_version"] == champion


def test_predict_from_a_feature_row_returns_the_signal_regime_and_version(service):
    url, settings = service
    answer = post(url, "/predict", {"symbol": "PROMOUSDT", "features": feature_row(settings), "regime": "trending_up"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["signal"] in {"long", "short", "flat"} and 0 < body["prob_up"] < 1
    assert body["regime"] == "trending_up" and body["family"] == "logistic" and body["model_version"] == "1"
    assert body["allow"] == (body["confidence"] >= body["threshold"]) and body["out_of_distribution"] is False
    # Trained on 2024 bars and asked now, with no bar_time: older than ITFF_MODEL_MAX_AGE_DAYS, answered and flagged.
    assert body["expired"] is True and body["model_age_days"] > 30 and body["tradable"] is True


def test_a_row_unlike_anything_in_training_is_flagged_out_of_distribution(service):
    url, settings = service
    absurd = {name: 0.1 for name in feature_row(settings)}  # e.g. 10 % realized volatility per bar
    body = post(url, "/predict", {"symbol": "PROMOUSDT", "features": absurd}).json()
    assert body["out_of_distribution"] is True


def test_predict_from_candles_computes_features_and_the_regime_like_the_lake(service):
    url, _settings = service
    candles = SampleCandleSource().fetch("BTCUSDT", "1h", utc(2024, 1, 1), utc(2024, 3, 1))
    window = [dict(zip(candles.columns, (r[0].isoformat(), *r[1:]))) for r in candles.tail(800).iter_rows()]
    answer = post(url, "/predict", {"symbol": "PROMOUSDT", "candles": window})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["regime"] in {"trending_up", "trending_down", "range_bound", "volatile", "neutral"}
    assert body["bar_time"].startswith("2024-02-29T23:00")


def test_the_fast_route_and_bentoml_answer_a_window_alike(service):
    """Times written +00:00 take the fast route (serving/fast_predict.py); the same instants written +01:00 go
    through BentoML's pydantic input. Both answers, and BentoML's request counter, must agree."""
    url, _settings = service
    window = candle_window()
    shifted = [
        c | {"timestamp": (datetime.fromisoformat(c["timestamp"]) + timedelta(hours=1)).isoformat()} for c in window
    ]
    shifted = [c | {"timestamp": c["timestamp"].replace("+00:00", "+01:00")} for c in shifted]

    def requests_counted() -> float:
        text = httpx.get(f"{url}/metrics", timeout=10).text
        lines = [line for line in text.splitlines() if line.startswith("bentoml_service_request_total{")]
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines if 'endpoint="/predict"' in line)

    before = requests_counted()
    fast, slow = (post(url, "/predict", {"symbol": "PROMOUSDT", "candles": w}) for w in (window, shifted))
    assert fast.status_code == slow.status_code == 200, (fast.text, slow.text)
    volatile = {"request_id", "served_at", "latency_ms"}
    assert {k: v for k, v in fast.json().items() if k not in volatile} == {
        k: v for k, v in slow.json().items() if k not in volatile
    }
    assert requests_counted() == before + 2


@pytest.mark.parametrize(
    "body, message",
    [
        ({"symbol": "DOGEUSDT", "features": {}}, "symbol: 'DOGEUSDT' is not served"),
        ({"symbol": "PROMOUSDT", "features": [0.1, 0.2]}, "features: 2 values given; this model takes 24"),
        ({"symbol": "PROMOUSDT", "features": {"rsi": 1.0}}, "features: missing ['log_return_1'"),
        ({"symbol": "PROMOUSDT"}, "features/candles: send exactly one of them"),
        ({"symbol": "PROMOUSDT", "target": "colour", "features": {}}, "target: 'colour' is not one of"),
        ({"symbol": "PROMOUSDT", "features": {}, "regime": "moon"}, "regime: 'moon' is not one of"),
        ({"symbol": "PROMOUSDT", "candles": [], "bar_time": "2024-01-01T00:00:00Z"}, "bar_time: only with features"),
    ],
)
def test_malformed_requests_get_a_4xx_naming_the_field(service, body, message):
    url, _ = service
    answer = post(url, "/predict", body)
    assert 400 <= answer.status_code < 500 and message in answer.text, answer.text


def test_nan_and_short_candle_windows_are_refused_with_4xx(service):
    url, settings = service
    row = feature_row(settings) | {"rsi": float("nan")}
    answer = httpx.post(
        f"{url}/predict",
        content=json.dumps({"symbol": "PROMOUSDT", "features": row}),
        headers={"X-API-Token": TOKEN, "Content-Type": "application/json"},
        timeout=30,
    )
    assert answer.status_code == 400 and "['rsi'] must be finite numbers" in answer.text
    huge = post(url, "/predict", {"symbol": "PROMOUSDT", "features": feature_row(settings) | {"rsi": 1e300}})
    assert huge.status_code == 400 and "beyond the float32 range" in huge.text  # finite in float64, inf in float32
    candles = SampleCandleSource().fetch("BTCUSDT", "1h", utc(2024, 1, 1), utc(2024, 1, 5))
    window = [dict(zip(candles.columns, (r[0].isoformat(), *r[1:]))) for r in candles.iter_rows()]
    short = post(url, "/predict", {"symbol": "PROMOUSDT", "candles": window})
    assert short.status_code == 400 and f"at least {minimum_candles(Settings())} 1h bars" in short.text


def test_a_token_is_required_and_checked(service):
    url, settings = service
    body = {"symbol": "PROMOUSDT", "features": feature_row(settings)}
    assert post(url, "/predict", body, token=None).status_code == 401
    wrong = post(url, "/predict", body, token="guess")
    assert wrong.status_code == 401 and "X-API-Token" in wrong.text


def test_request_size_is_limited(service):
    url, _ = service
    answer = post(url, "/predict", {"symbol": "PROMOUSDT", "features": [0.0] * 150_000}, token="other-token")
    assert answer.status_code == 413


def test_each_token_is_rate_limited_with_retry_after(service):
    url, settings = service
    body = {"symbol": "PROMOUSDT", "features": feature_row(settings)}
    answers = [post(url, "/predict", body, token="other-token") for _ in range(45)]
    codes = [a.status_code for a in answers]
    assert codes.count(429) >= 1 and codes[0] == 200
    # The bucket refills at 1/s while the loop runs, so look at a refused answer rather than at the 46th.
    limited = next(a for a in answers if a.status_code == 429)
    assert int(limited.headers["retry-after"]) >= 1


def candle_window(n=800):
    candles = SampleCandleSource().fetch("BTCUSDT", "1h", utc(2024, 1, 1), utc(2024, 3, 1))
    return [dict(zip(candles.columns, (r[0].isoformat(), *r[1:]))) for r in candles.tail(n).iter_rows()]


def signed(alert: dict, secret: str = "tv-secret") -> tuple[bytes, dict]:
    """The body and headers of an alert signed over its raw bytes, sent now."""
    import time as clock

    from itff_platform.serving.guard import body_signature

    body = json.dumps({"sent_at": clock.time(), **alert}).encode()
    return body, {"Content-Type": "application/json", "X-Signature": body_signature(secret, body)}


def test_tradingview_alerts_accept_exchange_prefixed_tickers_and_check_the_signature(service):
    url, _ = service
    window = candle_window()
    alert = {
        "ticker": "BINANCE:PROMOUSDT",
        "close": window[-1]["close"],
        "time": "2024-02-29T23:00:00Z",
        "candles": window,
    }
    unsigned = httpx.post(
        f"{url}/tradingview?token={TOKEN}", json=alert, timeout=30
    )  # token in the URL: TradingView sends no headers
    assert unsigned.status_code == 401 and "signature: missing" in unsigned.text
    body, headers = signed(alert)
    answer = httpx.post(f"{url}/tradingview?token={TOKEN}", content=body, headers=headers, timeout=30)
    assert answer.status_code == 200, answer.text
    served = answer.json()
    assert (
        served["symbol"] == "PROMOUSDT"
        and served["signal"] in {"long", "short", "flat"}
        and served["regime"] != "unknown"
    )
    assert served["stale"] is False and served["age_bars"] == 0 and served["bar_close"] == window[-1]["close"]
    no_lake = {k: v for k, v in alert.items() if k != "candles"}
    body, headers = signed(no_lake)
    missing = httpx.post(f"{url}/tradingview?token={TOKEN}", content=body, headers=headers, timeout=30)
    assert missing.status_code == 400 and "the lake has no silver table" in missing.text
    body, headers = signed(no_lake | {"time": "0001-01-01T00:00:00"})
    overflow = httpx.post(f"{url}/tradingview?token={TOKEN}", content=body, headers=headers, timeout=30)
    assert overflow.status_code == 400 and "time:" in overflow.text


def test_consensus_votes_every_validated_family_weighted_by_its_skill(service):
    url, settings = service
    client = MlflowClient(settings.tracking_uri)
    # boosting is registered but never promoted: it passed validation at registration, which wrote its manifest.
    train(settings, ["boosting"], noise=0.2)
    tags = {v.tags["family"]: v.tags for v in client.search_model_versions("name = 'itff-PROMOUSDT-direction'")}
    assert "promotion_decision" not in tags["boosting"] and len(tags["boosting"]["manifest_sha256"]) == 64
    assert tags["boosting"]["validated"] == "true", tags["boosting"]["validation_reason"]
    skills = {family: float(tags[family]["wf_skill"]) for family in ("logistic", "boosting")}
    assert min(skills.values()) > 0, skills

    rows = feature_rows(settings, 12)
    answers = [post(url, "/consensus", {"symbol": "PROMOUSDT", "features": row}) for row in rows]
    assert all(a.status_code == 200 for a in answers), answers[0].text
    body = answers[0].json()
    votes = {member["family"]: member for member in body["families"]}
    assert set(votes) == {"logistic", "boosting"} and body["skipped_families"] == {}
    # Each family's weight is its share of the walk-forward skill, and the vote is the weighted mean.
    for family, vote in votes.items():
        assert vote["skill"] == pytest.approx(skills[family])
        assert vote["weight"] == pytest.approx(skills[family] / sum(skills.values()))
    assert body["prob_up"] == pytest.approx(sum(v["weight"] * v["prob_up"] for v in votes.values()))
    # Runbook 004's fields: the gate is the confidence threshold, and the ensemble has one id.
    assert body["prob_long"] == body["prob_up"] and abs(body["prob_long"] + body["prob_short"] - 1) < 1e-12
    assert body["threshold"] == settings.trading.confidence_threshold
    assert body["model_version"].startswith("ensemble-") and body["family"] == "ensemble"
    for answer in (a.json() for a in answers):
        assert answer["confidence"] == max(answer["prob_long"], answer["prob_short"])
        assert answer["allow"] == (answer["signal"] != "flat" and answer["confidence"] >= answer["threshold"])
        assert answer["allow"] == (answer["reason"] is None)
    unsure = [a.json() for a in answers if a.json()["confidence"] < settings.trading.confidence_threshold]
    assert unsure and not any(a["allow"] for a in unsure)  # below ITFF_CONFIDENCE_THRESHOLD nothing is allowed
    SERVER["consensus"] = [a.json()["request_id"] for a in answers]


def test_predict_batch_scores_many_rows_in_one_call(service):
    url, settings = service
    row = list(feature_row(settings).values())
    answer = post(url, "/predict_batch", {"symbol": "PROMOUSDT", "rows": [row] * 500})
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["prob_up"]) == 500 and len(set(answer.json()["signal"])) == 1
    wrong = post(url, "/predict_batch", {"symbol": "PROMOUSDT", "rows": [row[:-1]]})
    assert wrong.status_code == 400 and "each row must hold 24 values" in wrong.text
    uneven = post(url, "/predict_batch", {"symbol": "PROMOUSDT", "rows": [row, row[:3]]})
    assert uneven.status_code == 400 and "rows [1] do not" in uneven.text


def test_metrics_count_predictions_by_symbol_regime_and_signal(service):
    url, _ = service
    text = httpx.get(f"{url}/metrics", timeout=10).text
    assert "itff_predictions_total{" in text and 'symbol="PROMOUSDT"' in text
    assert "itff_served_model_version" in text and "itff_prediction_latency_seconds_bucket" in text
    assert "itff_predict_batch_size_bucket" in text
    # No evaluation has run: the quality gauge still has a series, saying so.
    assert 'prediction_quality_metric{metric="has_data",symbol="PROMOUSDT",target="direction"} 0.0' in text


def test_hot_reload_switches_to_a_new_champion_and_refuses_a_tampered_one(service):
    url, settings = service
    client = MlflowClient(settings.tracking_uri)
    assert post(url, "/admin/reload", {}, token=TOKEN).status_code == 401  # prediction tokens are not admin tokens

    train(settings, ["logistic"], noise=0.05)
    decision = promote_champion(settings, "PROMOUSDT", "direction")
    assert decision.promoted
    # Tamper with the new champion's weights before the service sees it.
    weights = model_files(client, "itff-PROMOUSDT-direction", decision.challenger)
    state = weights / "artifacts" / "forecaster" / "state.pkl"
    state.write_bytes(state.read_bytes() + b"x")
    reloaded = post(url, "/admin/reload", {}, token=ADMIN).json()
    assert "refused" in reloaded["changes"]["itff-PROMOUSDT-direction"]
    status = reloaded["models"]["itff-PROMOUSDT-direction"]
    assert status["serving_version"] == decision.champion_before and decision.challenger in status["refused_versions"]
    still = post(url, "/predict", {"symbol": "PROMOUSDT", "features": feature_row(settings)})
    assert still.json()["model_version"] == decision.champion_before  # the old champion keeps serving

    train(settings, ["boosting"], noise=0.02)
    better = promote_champion(settings, "PROMOUSDT", "direction")
    assert better.promoted
    reloaded = post(url, "/admin/reload", {}, token=ADMIN).json()
    assert reloaded["changes"]["itff-PROMOUSDT-direction"].startswith(f"serving v{better.challenger}")
    answer = post(url, "/predict", {"symbol": "PROMOUSDT", "features": feature_row(settings)}).json()
    assert answer["model_version"] == better.challenger and answer["family"] == "boosting"


def test_zz_every_prediction_is_in_the_log_after_a_clean_shutdown(service):
    """Runs last: it stops the server. Buffered predictions must reach the Delta table on SIGTERM."""
    import polars as pl

    from itff_platform.monitoring.prediction_log import prediction_log_path

    url, settings = service
    asked = [
        post(url, "/predict", {"symbol": "PROMOUSDT", "features": feature_row(settings)}).json()["request_id"]
        for _ in range(5)
    ]
    path = prediction_log_path(settings)
    assert not path.exists()  # still buffered: flush_s is an hour
    SERVER["process"].terminate()
    SERVER["process"].wait(timeout=60)
    log = pl.read_delta(str(path))
    assert set(asked) <= set(log["request_id"].to_list())
    mine = log.filter(pl.col("request_id").is_in(asked))
    assert (
        mine["model_version"].is_not_null() & (mine["latency_ms"] > 0) & (mine["input_sha256"].str.len_chars() == 64)
    ).all()
    assert mine["input_sha256"].n_unique() == 1  # the same row five times hashes the same
    # /consensus answers are logged like /predict's, under their ensemble's id, for live evaluation to score.
    voted = log.filter(pl.col("request_id").is_in(SERVER["consensus"]))
    assert voted.height == len(SERVER["consensus"]) and (voted["endpoint"] == "/consensus").all()
    assert voted["model_version"].str.starts_with("ensemble-").all() and (voted["family"] == "ensemble").all()
    assert voted["prob_up"].is_not_null().all() and voted["allow"].is_not_null().all()
