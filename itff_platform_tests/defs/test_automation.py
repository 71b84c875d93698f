"""Schedules and sensors, evaluated with Dagster's own test contexts against real instances, files and registries."""

import json
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import ClassVar

import pytest
from dagster import (
    AssetKey,
    AssetMaterialization,
    DagsterInstance,
    MetadataValue,
    SensorResult,
    SkipReason,
    build_schedule_context,
    build_sensor_context,
)

import mlflow
from itff_platform.definitions import defs, evaluation_job, lake_job, training_job
from itff_platform.defs.automation import automation
from itff_platform.settings import Settings
from mlflow import MlflowClient

REPOSITORY = defs.get_repository_def()
# build_run_status_sensor_context(repository_def=...) is marked beta; it is the documented way to test these sensors.
pytestmark = pytest.mark.filterwarnings("ignore:.*is currently in beta")


def jobs_and_sensors(settings: Settings):
    schedules, sensors = automation(settings, lake_job, training_job, evaluation_job)
    return {s.name: s for s in schedules}, {s.name: s for s in sensors}


def requests_of(result) -> list:
    return result.run_requests if isinstance(result, SensorResult) else list(result or [])


def test_schedules_and_sensors_are_registered_and_stopped_by_default():
    assert {s.name for s in REPOSITORY.schedule_defs} == {
        "daily_refresh",
        "weekly_evaluation",
        "lake_maintenance",
        "daily_paper_performance",
    }
    assert {s.name for s in REPOSITORY.sensor_defs} == {
        "drop_folder",
        "champion_alias",
        "drift_retrain",
        "retrain_after_daily_lake",
        "paper_autopilot",
    }
    assert all(s.default_status.value == "STOPPED" for s in REPOSITORY.schedule_defs)
    assert all(s.default_status.value == "STOPPED" for s in REPOSITORY.sensor_defs)
    schedules, _ = jobs_and_sensors(Settings(automation_on=True, daily_run_utc="03:40"))
    assert (
        schedules["daily_refresh"].cron_schedule == "40 3 * * *"
        and schedules["daily_refresh"].default_status.value == "RUNNING"
    )


def test_the_daily_refresh_ingests_every_symbols_newest_month():
    schedules, _ = jobs_and_sensors(Settings(source="sample"))
    context = build_schedule_context(
        scheduled_execution_time=datetime(2024, 9, 30, 2, 15, tzinfo=UTC), repository_def=REPOSITORY
    )
    requests = list(schedules["daily_refresh"].evaluate_tick(context).run_requests)
    assert sorted(r.partition_key for r in requests) == ["2024-09-01|BTCUSDT", "2024-09-01|ETHUSDT"]
    assert all(r.tags["itff/trigger"] == "daily" and r.run_key.startswith("daily-2024-09-30") for r in requests)
    weekly = schedules["weekly_evaluation"].evaluate_tick(context).run_requests
    assert len(weekly) == 1 and weekly[0].run_key == "weekly-2024-09-30"


def test_the_drop_folder_sensor_ingests_a_file_once_and_again_only_when_it_changes(tmp_path, btc_hourly):
    drop = tmp_path / "drop"
    drop.mkdir()
    settings = Settings(home=tmp_path, drop_dir=drop, symbols=["BTCUSDT"])
    _, sensors = jobs_and_sensors(settings)
    sensor = sensors["drop_folder"]
    two_months = btc_hourly.filter(btc_hourly["timestamp"].dt.strftime("%Y-%m").is_in(["2024-07", "2024-08"]))
    two_months.write_parquet(drop / "BTCUSDT-1h-export.parquet")
    (drop / "ETHUSDT-1h.csv").write_text("not,a,candle\n1,2\n")  # not a configured symbol: ignored

    first = sensor(build_sensor_context(repository_def=REPOSITORY))
    assert sorted(r.partition_key for r in first.run_requests) == ["2024-07-01|BTCUSDT", "2024-08-01|BTCUSDT"]
    assert all(r.tags["itff/trigger"] == "drop_folder" for r in first.run_requests)
    assert first.run_requests[0].run_config["resources"]["itff"]["config"]["source"] == "files"

    again = sensor(build_sensor_context(repository_def=REPOSITORY, cursor=first.cursor))
    assert again.run_requests == [] and "no new or changed files" in again.skip_reason.skip_message

    two_months.head(100).write_parquet(drop / "BTCUSDT-1h-export.parquet")  # the vendor re-sends a corrected file
    changed = sensor(build_sensor_context(repository_def=REPOSITORY, cursor=again.cursor))
    assert [r.partition_key for r in changed.run_requests] == ["2024-07-01|BTCUSDT"]
    assert changed.run_requests[0].run_key != first.run_requests[0].run_key


def test_a_malformed_drop_file_is_named_and_skipped_until_it_changes(tmp_path):
    drop = tmp_path / "drop"
    drop.mkdir()
    (drop / "BTCUSDT-1h.csv").write_text("timestamp,open\nyesterday,abc\n")
    _, sensors = jobs_and_sensors(Settings(home=tmp_path, drop_dir=drop, symbols=["BTCUSDT"]))
    result = sensors["drop_folder"](build_sensor_context(repository_def=REPOSITORY))
    assert result.run_requests == [] and "BTCUSDT-1h.csv" in result.skip_reason.skip_message


def test_the_drift_sensor_requests_retraining_of_what_drift_monitor_flagged_once():
    instance = DagsterInstance.ephemeral()
    _, sensors = jobs_and_sensors(Settings())
    sensor = sensors["drift_retrain"]
    assert isinstance(sensor(build_sensor_context(instance=instance, repository_def=REPOSITORY)), SkipReason)
    instance.report_runless_asset_event(
        AssetMaterialization(
            "drift_monitor", metadata={"retrain": MetadataValue.json(["BTCUSDT|direction", "ETHUSDT|level_up"])}
        )
    )
    result = sensor(build_sensor_context(instance=instance, repository_def=REPOSITORY))
    assert sorted(r.partition_key for r in result.run_requests) == ["BTCUSDT|direction", "ETHUSDT|level_up"]
    assert all(
        r.run_config["resources"]["itff"]["config"]["trials"] == Settings().automation.daily_trials
        for r in result.run_requests
    )
    repeat = sensor(build_sensor_context(instance=instance, repository_def=REPOSITORY, cursor=result.cursor))
    assert isinstance(repeat, SkipReason)


class ReloadRecorder(BaseHTTPRequestHandler):
    calls: ClassVar[list[tuple[str, str | None]]] = []

    def do_POST(self):
        ReloadRecorder.calls.append((self.path, self.headers.get("X-API-Token")))
        body = json.dumps({"changes": {}}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_service():
    server = HTTPServer(("127.0.0.1", 0), ReloadRecorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ReloadRecorder.calls = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_moved_champion_alias_reloads_the_service_and_is_recorded(tmp_path, fake_service):
    settings = Settings(
        home=tmp_path, symbols=["BTCUSDT"], targets=["direction"], service_url=fake_service, admin_token="adm"
    )
    mlflow.set_tracking_uri(settings.tracking_uri)
    client = MlflowClient(settings.tracking_uri)
    client.create_registered_model("itff-BTCUSDT-direction")
    for _ in range(2):
        client.create_model_version("itff-BTCUSDT-direction", source=str(tmp_path))
    client.set_registered_model_alias("itff-BTCUSDT-direction", "champion", "1")
    _, sensors = jobs_and_sensors(settings)
    sensor = sensors["champion_alias"]

    first = sensor(build_sensor_context(repository_def=REPOSITORY))
    assert json.loads(first.cursor) == {"itff-BTCUSDT-direction": "1"}
    event = first.asset_events[0]
    assert event.asset_key == AssetKey("champion_models") and event.partition == "BTCUSDT|direction"
    assert event.metadata["service_reload"].value == "reloaded" and ReloadRecorder.calls == [("/admin/reload", "adm")]

    assert isinstance(sensor(build_sensor_context(repository_def=REPOSITORY, cursor=first.cursor)), SkipReason)
    client.set_registered_model_alias("itff-BTCUSDT-direction", "champion", "2")
    moved = sensor(build_sensor_context(repository_def=REPOSITORY, cursor=first.cursor))
    assert moved.asset_events[0].metadata["previous_version"].value == "1"
    assert moved.asset_events[0].metadata["champion_version"].value == "2" and len(ReloadRecorder.calls) == 2


def test_an_unreachable_service_is_reported_not_fatal(tmp_path):
    from itff_platform.defs.automation import reload_service

    status = reload_service(Settings(home=tmp_path, service_url="http://127.0.0.1:9", admin_token="adm"))
    assert status.startswith("service unreachable") and "poll" in status
    assert reload_service(Settings(home=tmp_path)).startswith("skipped")


def test_a_successful_daily_lake_run_retrains_and_promotes_that_symbol_on_the_daily_budget(tmp_path):
    from dagster import DagsterEventType, build_run_status_sensor_context

    instance = DagsterInstance.ephemeral()
    job = defs.resolve_job_def("lake_job")
    run = job.execute_in_process(
        partition_key="2024-09-01|ETHUSDT",
        instance=instance,
        tags={"itff/trigger": "daily"},
        run_config={"resources": {"itff": {"config": {"lake_dir": str(tmp_path / "lake")}}}},
    )
    assert run.success
    success = instance.all_logs(run.run_id, of_type=DagsterEventType.RUN_SUCCESS)[0].dagster_event
    _, sensors = jobs_and_sensors(Settings())
    context = build_run_status_sensor_context(
        sensor_name="retrain_after_daily_lake",
        dagster_instance=instance,
        dagster_run=run.dagster_run,
        dagster_event=success,
        repository_def=REPOSITORY,
    )
    requests = sensors["retrain_after_daily_lake"](context)
    assert sorted(r.partition_key for r in requests) == [f"ETHUSDT|{t}" for t in sorted(Settings().training.targets)]
    assert all(
        r.run_config["resources"]["itff"]["config"]["trials"] == Settings().automation.daily_trials for r in requests
    )

    manual = job.execute_in_process(
        partition_key="2024-09-01|ETHUSDT",
        instance=instance,
        run_config={"resources": {"itff": {"config": {"lake_dir": str(tmp_path / "lake")}}}},
    )
    success = instance.all_logs(manual.run_id, of_type=DagsterEventType.RUN_SUCCESS)[0].dagster_event
    context = build_run_status_sensor_context(
        sensor_name="retrain_after_daily_lake",
        dagster_instance=instance,
        dagster_run=manual.dagster_run,
        dagster_event=success,
        repository_def=REPOSITORY,
    )
    assert isinstance(sensors["retrain_after_daily_lake"](context), SkipReason)  # a hand-started run retrains nothing


def test_on_the_first_of_a_month_the_daily_refresh_also_completes_the_month_before():
    from itff_platform.defs.automation import newest_month_keys

    live = Settings(source="binance", symbols=["BTCUSDT"])
    assert newest_month_keys(live, datetime(2026, 12, 1, 2, 15, tzinfo=UTC)) == [
        "2026-11-01|BTCUSDT",
        "2026-12-01|BTCUSDT",
    ]
    assert newest_month_keys(live, datetime(2026, 12, 9, 2, 15, tzinfo=UTC)) == ["2026-12-01|BTCUSDT"]
    assert newest_month_keys(Settings(symbols=["BTCUSDT"]), datetime(2026, 12, 1, tzinfo=UTC)) == ["2024-09-01|BTCUSDT"]


def test_the_drift_sensor_ignores_what_a_replay_materialized():
    from dagster import MaterializeResult, asset, materialize

    @asset(name="drift_monitor")
    def replayed_drift_monitor() -> MaterializeResult:
        return MaterializeResult(metadata={"retrain": MetadataValue.json(["BTCUSDT|direction"])})

    instance = DagsterInstance.ephemeral()
    assert materialize([replayed_drift_monitor], instance=instance, tags={"itff/trigger": "replay"}).success
    _, sensors = jobs_and_sensors(Settings())
    result = sensors["drift_retrain"](build_sensor_context(instance=instance, repository_def=REPOSITORY))
    assert result.run_requests == [] and "replay" in result.skip_reason.skip_message and result.cursor
