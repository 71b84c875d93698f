"""`itff replay` on a real lake and a real registry: incremental lake updates, logged predictions with their
outcomes, drift and decisions; then the monitoring assets materialized by Dagster over what it left."""

from datetime import UTC, date, datetime

import polars as pl
import pytest

import mlflow
from itff_platform.lake.layers import LakeTables, build_bronze, build_silver, ingest_raw
from itff_platform.market.files import FilesCandleSource
from itff_platform.monitoring.evaluation import read_decisions
from itff_platform.monitoring.prediction_log import read_prediction_log
from itff_platform.monitoring.replay import KnownBy, replay, replay_settings
from itff_platform.settings import Settings
from itff_platform.training.promotion import promote_champion
from itff_platform_tests.conftest import utc
from itff_platform_tests.training.test_promotion import train

MONTHS = [utc(2024, 4, 1), utc(2024, 5, 1), utc(2024, 6, 1), utc(2024, 7, 1)]


@pytest.fixture(scope="module")
def replayed(tmp_path_factory, btc_hourly):
    home = tmp_path_factory.mktemp("replay")
    drop = home / "drop"
    drop.mkdir()
    # Real BTCUSDT candles under the test champion's symbol, through the files source.
    btc_hourly.filter(pl.col("timestamp") >= utc(2024, 4, 1), pl.col("timestamp") < utc(2024, 8, 1)).write_parquet(
        drop / "PROMOUSDT-1h.parquet"
    )
    settings = Settings(
        home=home,
        drop_dir=drop,
        source="files",
        symbols=["PROMOUSDT"],
        targets=["direction"],
        trials=1,
        wf_folds=3,
        start_date=date(2024, 4, 1),
        end_date=date(2024, 8, 1),
        drift_recent_days=7,
        drift_reference_days=30,
        min_live_outcomes=24,
    )
    source = FilesCandleSource(drop)
    for month in MONTHS:
        ingest_raw(KnownBy(source, utc(2024, 7, 10)), settings, "PROMOUSDT", [month])
        build_bronze(settings, "PROMOUSDT", [month])
    build_silver(settings, "PROMOUSDT", MONTHS)
    mlflow.set_tracking_uri(settings.tracking_uri)
    train(settings, ["logistic"], noise=0.2)
    assert promote_champion(settings, "PROMOUSDT", "direction").promoted
    lines = []
    summary = replay(settings, date(2024, 7, 10), date(2024, 7, 13), progress=lines.append, report_every_days=2)
    return replay_settings(settings), summary, lines


def test_each_day_sees_only_what_was_known_and_the_month_is_whole_again_after(replayed):
    settings, summary, _ = replayed
    log = read_prediction_log(settings)
    # Each day's predictions were made from a lake that ended at that day's last bar.
    assert log["bar_time"].max() == utc(2024, 7, 13, 23) and log["bar_time"].min() == utc(2024, 7, 10)
    silver = pl.read_delta(LakeTables.under(settings).silver).filter(pl.col("month") == date(2024, 7, 1))
    assert silver["timestamp"].max() == utc(2024, 7, 31, 23)  # restored after the replay: no hole after END
    assert silver.filter(pl.col("timestamp") < utc(2024, 7, 31, 19))["direction"].null_count() == 0
    assert summary.days == 4 and summary.silver_rows_written > 0


def test_replay_keeps_its_log_and_decisions_apart_from_the_live_ones(replayed):
    settings, _, _ = replayed
    assert settings.monitoring.root.name == "replay" and settings.reports_dir.name == "replay"
    live = settings.model_copy(update={"monitoring_dir": settings.monitoring.root.parent})
    assert read_prediction_log(live).is_empty() and read_decisions(live).is_empty()


def test_every_bar_is_predicted_once_and_outcomes_are_realized(replayed):
    settings, summary, lines = replayed
    log = read_prediction_log(settings)
    assert log.height == summary.predictions == 4 * 24
    assert log["bar_time"].n_unique() == 96 and (log["endpoint"] == "replay").all()
    assert (log["logged_at"] > log["bar_time"]).all()  # served when the bar closed, never before
    last = summary.last_evaluation
    assert (
        last.realized.height == 96 - settings.features.label_horizon and last.pending == settings.features.label_horizon
    )
    overall = last.quality.filter(pl.col("scope") == "all").row(0, named=True)
    assert overall["n"] == last.realized.height and 0 <= overall["brier"] <= 1
    # The synthetic training walk runs past 2024-07-10, so the replay must say its figures are in-sample.
    assert any("in-sample" in line and "itff-PROMOUSDT-direction" in line for line in lines)


def test_drift_and_a_decision_per_model_and_day_are_recorded_with_reports(replayed):
    settings, summary, _ = replayed
    decisions = read_decisions(settings)
    assert decisions.height == 4 and set(decisions["decision"]) <= {"keep", "retrain"}
    last = summary.last_evaluation
    assert set(last.drift["PROMOUSDT"]["feature"]) >= {"rsi", "adx"} and "psi" in last.regime["PROMOUSDT"]
    # The champion learned a synthetic random walk; real BTC candles are another world: drift says so.
    assert "retrain" in set(decisions["decision"])
    pngs = sorted(p.name for p in (settings.reports_dir / "2024-07-13").glob("*.png"))
    assert "drift-PROMOUSDT.png" in pngs and "reliability-PROMOUSDT-direction.png" in pngs


def test_the_monitoring_assets_materialize_with_checks(replayed, monkeypatch):
    from dagster import DagsterInstance, materialize

    from itff_platform.definitions import monitoring
    from itff_platform.defs.resources import ItffSettingsResource

    settings, _, _ = replayed
    for name in ("home", "source", "drop_dir", "monitoring_dir", "reports_dir"):
        monkeypatch.setenv(f"ITFF_{name.upper()}", str(settings.flat_dump()[name]))
    monkeypatch.setenv("ITFF_SYMBOLS", '["PROMOUSDT"]')
    monkeypatch.setenv("ITFF_TARGETS", '["direction"]')
    instance = DagsterInstance.ephemeral()
    result = materialize(
        monitoring,
        instance=instance,
        resources={"itff": ItffSettingsResource(evaluation_as_of=datetime(2024, 7, 14, tzinfo=UTC).isoformat())},
    )
    assert result.success
    outcomes = result.asset_materializations_for_node("prediction_outcomes")[0].metadata
    assert outcomes["outcomes_realized"].value == 96 - settings.features.label_horizon
    assert any(k.startswith("plot: reliability") for k in outcomes)
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(checks) == {"feature_drift", "regime_shift", "live_quality"}
    drift = result.asset_materializations_for_node("drift_monitor")[0].metadata
    assert "PROMOUSDT|direction" in drift["retrain"].value or drift["retrain"].value == []
    assert "decisions" in drift and any(k.startswith("plot: drift") for k in drift)
