"""Schedules and sensors that keep the platform fresh without anyone at the keyboard.

daily_refresh (schedule)  -> lake_job on each symbol's newest month
retrain_after_daily_lake  -> training_job (train + promote) for that symbol's targets, on the daily budget
weekly_evaluation         -> evaluation_job (prediction_outcomes, drift_monitor)
drift_retrain             -> training_job for the models drift_monitor sent for retraining
drop_folder               -> lake_job (source: files) for each new or changed file, never twice; unusable files set aside
lake_maintenance          -> lake_maintenance_job: compact, vacuum, and check silver against bronze
champion_alias            -> tells the service to reload when a champion alias moves, and records it

They start stopped (switch them on in the UI, or ITFF_AUTOMATION_ON=true), so a `make dev` on a laptop
does not begin retraining by itself."""

import json
from datetime import datetime, timedelta

from dagster import (
    AssetKey,
    AssetObservation,
    DagsterRunStatus,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRequest,
    SensorResult,
    SkipReason,
    run_status_sensor,
    schedule,
    sensor,
)

from itff_platform.settings import Settings

TRIGGER = "itff/trigger"
BATCH = "itff/refresh"  # what one refresh is: a day of the schedule, or one version of a dropped file


def _budget(settings: Settings) -> dict:
    return {
        "resources": {
            "itff": {
                "config": {
                    "trials": settings.automation.daily_trials,
                    "torch_trials": settings.automation.daily_torch_trials,
                }
            }
        }
    }


def newest_month_keys(settings: Settings, at: datetime) -> list[str]:
    """The lake partitions a daily refresh at `at` rewrites ("month|symbol" keys): the month of every bar since the
    previous refresh, and of the bars whose labels only now became known. On the 1st that includes last month,
    whose final day would otherwise never be completed. A source that stops (the sample) refreshes its last month."""
    from itff_platform.defs.partitions import lake_partitions

    months = lake_partitions(settings).get_partitions_def_for_dimension("month")
    known = months.get_partition_keys(current_time=at)
    lookback = timedelta(days=1, seconds=settings.interval_seconds * (settings.features.label_horizon + 1))
    wanted = sorted({day.strftime("%Y-%m-01") for day in (at - lookback, at)} & set(known)) or known[-1:]
    return [f"{month}|{symbol}" for month in wanted for symbol in settings.symbols]


def training_keys(settings: Settings, symbols: list[str]) -> list[str]:
    return [f"{symbol}|{target}" for symbol in symbols for target in settings.training.targets]


def automation(settings: Settings, lake_job, training_job, evaluation_job) -> tuple[list, list]:
    on = settings.automation.enabled
    schedule_status = DefaultScheduleStatus.RUNNING if on else DefaultScheduleStatus.STOPPED
    sensor_status = DefaultSensorStatus.RUNNING if on else DefaultSensorStatus.STOPPED
    hour, minute = settings.automation.daily_run_utc.split(":")

    @schedule(
        job=lake_job,
        cron_schedule=f"{int(minute)} {int(hour)} * * *",
        execution_timezone="UTC",
        default_status=schedule_status,
        description="Ingest the newest data for every symbol; training follows.",
    )
    def daily_refresh(context):
        at = context.scheduled_execution_time
        day = at.strftime("%Y-%m-%d")
        for key in newest_month_keys(settings, at):
            yield RunRequest(run_key=f"daily-{day}-{key}", partition_key=key, tags={TRIGGER: "daily", BATCH: day})

    @run_status_sensor(
        run_status=DagsterRunStatus.SUCCESS,
        monitored_jobs=[lake_job],
        request_job=training_job,
        default_status=sensor_status,
        description="After a daily or drop-folder lake run: retrain and promote that symbol, on the daily budget.",
    )
    def retrain_after_daily_lake(context):
        run = context.dagster_run
        if run.tags.get(TRIGGER) not in ("daily", "drop_folder"):
            return SkipReason(f"run {run.run_id} was not a daily or drop-folder refresh")
        symbol = run.tags.get("dagster/partition/symbol") or run.tags["dagster/partition"].split("|")[1]
        # One retrain per symbol per refresh: a day or a file may span two months (two lake runs), and the run key,
        # which Dagster never launches twice, is the same for both.
        batch = run.tags.get(BATCH, run.run_id)
        return [
            RunRequest(
                run_key=f"retrain-{batch}-{key}",
                partition_key=key,
                run_config=_budget(settings),
                tags={TRIGGER: "daily"},
            )
            for key in training_keys(settings, [symbol])
        ]

    @schedule(
        job=evaluation_job,
        cron_schedule=settings.automation.weekly_evaluation_cron,
        execution_timezone="UTC",
        default_status=schedule_status,
        description="Live quality and drift of the champions, with reports.",
    )
    def weekly_evaluation(context):
        return RunRequest(run_key=f"weekly-{context.scheduled_execution_time:%Y-%m-%d}", tags={TRIGGER: "weekly"})

    @sensor(
        job=training_job,
        minimum_interval_seconds=60,
        default_status=sensor_status,
        description="Retrain (and re-run promotion for) every model the newest drift_monitor sent for retraining.",
    )
    def drift_retrain(context):
        return drift_retrain_requests(context, settings)

    @sensor(
        job=lake_job,
        minimum_interval_seconds=30,
        default_status=sensor_status,
        description=f"Ingest new or changed candle files in the drop folder ({settings.sources.files.drop_dir}); each version once.",
    )
    def drop_folder(context):
        return drop_folder_requests(context, settings)

    @sensor(
        minimum_interval_seconds=60,
        default_status=sensor_status,
        asset_selection=[AssetKey("champion_models")],
        description="When a champion alias moves: tell the service to reload, and record the event on champion_models.",
    )
    def champion_alias(context):
        return champion_alias_result(context, settings)

    return [daily_refresh, weekly_evaluation], [retrain_after_daily_lake, drift_retrain, drop_folder, champion_alias]


def maintenance_schedule(settings: Settings, maintenance_job):
    status = DefaultScheduleStatus.RUNNING if settings.automation.enabled else DefaultScheduleStatus.STOPPED

    @schedule(
        job=maintenance_job,
        cron_schedule=settings.lake.maintenance_cron,
        execution_timezone="UTC",
        default_status=status,
        name="lake_maintenance",
        description="Compact small Delta files, vacuum files older than the retention, check silver against bronze.",
    )
    def lake_maintenance_schedule(context):
        return RunRequest(
            run_key=f"maintenance-{context.scheduled_execution_time:%Y-%m-%d}", tags={TRIGGER: "maintenance"}
        )

    return lake_maintenance_schedule


def drift_retrain_requests(context, settings: Settings):
    records = context.instance.fetch_materializations(AssetKey("drift_monitor"), limit=1, ascending=False).records
    if not records:
        return SkipReason("drift_monitor has not been materialized yet")
    event = records[0]
    if context.cursor and int(context.cursor) >= event.storage_id:
        return SkipReason(f"no drift_monitor result newer than {context.cursor}")
    run = context.instance.get_run_by_id(event.event_log_entry.run_id)
    if run is not None and run.tags.get(TRIGGER) == "replay":  # history being replayed is not a reason to retrain today
        return SensorResult(
            cursor=str(event.storage_id), skip_reason=SkipReason("the newest drift_monitor came from a replay")
        )
    value = event.event_log_entry.asset_materialization.metadata.get("retrain")
    retrain = value.value if value is not None else []
    requests = [
        RunRequest(
            run_key=f"drift-{event.storage_id}-{key}",
            partition_key=key,
            run_config=_budget(settings),
            tags={TRIGGER: "drift"},
        )
        for key in retrain
    ]
    return SensorResult(
        run_requests=requests,
        cursor=str(event.storage_id),
        skip_reason=None if requests else SkipReason("the newest drift_monitor asked for no retraining"),
    )


def drop_folder_requests(context, settings: Settings):
    """One lake run per (file version, month, symbol). The cursor remembers each file's mtime and size, so a file
    is ingested again only if it changes; the run key makes a repeat request a no-op even if the cursor is lost.

    A file that cannot be read, or holds no row inside the lake's months, is set aside into rejected/ with its
    reason here, before any run is requested: no run starts on a known-bad file, and the runs for the good
    files of the same symbol no longer meet it."""
    from itff_platform.defs.partitions import lake_partitions
    from itff_platform.lake.layers import lake_months
    from itff_platform.market.files import FilesCandleSource, read_drop_file, set_aside
    from itff_platform.market.parsing import CandleFileError

    seen = json.loads(context.cursor) if context.cursor else {}
    source, months = (
        FilesCandleSource(settings.sources.files.drop_dir),
        lake_partitions(settings).get_partitions_def_for_dimension("month"),
    )
    valid_months = set(months.get_partition_keys())
    first, end = lake_months(settings)
    requests, problems = [], []
    for symbol in settings.symbols:
        for path in source.files_for(symbol, settings.interval):
            stat = path.stat()
            version = f"{stat.st_mtime_ns}:{stat.st_size}"
            name = str(path.relative_to(settings.sources.files.drop_dir))
            if seen.get(name) == version:
                continue
            seen[name] = version
            candles, rejected = read_drop_file(settings.sources.files.drop_dir, path)
            # candles is None exactly when the file was set aside (rejected is not None).
            if (
                rejected is None
                and candles is not None
                and candles.height
                and not (set(_file_months(candles)) & valid_months)
            ):
                rejected = set_aside(
                    settings.sources.files.drop_dir,
                    path,
                    CandleFileError(
                        name,
                        "timestamp",
                        "out_of_range",
                        f"every row ({candles.height}) is outside the lake's months [{first}, {end}); the rule is a month the lake holds",
                    ),
                )
            if rejected is not None:
                problems.append(f"{name} set aside into {rejected.moved_to}: {rejected.message}")
                context.log.warning(f"drop folder: {problems[-1]}")
                continue
            for month in _file_months(candles):
                if month not in valid_months:
                    problems.append(
                        f"{name}: rows of {month} are outside the lake's months; the run quarantines them as out_of_range"
                    )
                    continue
                requests.append(
                    RunRequest(
                        run_key=f"drop-{name}-{version}-{month}",
                        partition_key=f"{month}|{symbol}",
                        run_config={
                            "resources": {
                                "itff": {
                                    "config": {"source": "files", "drop_dir": str(settings.sources.files.drop_dir)}
                                }
                            }
                        },
                        tags={TRIGGER: "drop_folder", "itff/file": name, BATCH: f"{name}:{version}"},
                    )
                )
    return SensorResult(
        run_requests=requests,
        cursor=json.dumps(seen, sort_keys=True),
        skip_reason=None if requests else SkipReason("; ".join(problems) or "no new or changed files"),
    )


def _file_months(candles) -> list[str]:
    return sorted({m.strftime("%Y-%m-%d") for m in candles["timestamp"].dt.truncate("1mo").unique().to_list()})


def champion_alias_result(context, settings: Settings):
    from itff_platform.rules import registered_name
    from itff_platform.training.promotion import champion_versions

    seen = json.loads(context.cursor) if context.cursor else {}  # {registered model name: champion version}
    champions = {registered_name(*key): (key, str(v.version)) for key, v in champion_versions(settings).items()}
    moved = {name: champion for name, champion in champions.items() if seen.get(name) != champion[1]}
    if not moved:
        return SkipReason("no champion alias moved")
    reload_status = reload_service(settings)
    context.log.info(f"champion moved: {moved}; service reload: {reload_status}")
    events = [
        AssetObservation(
            asset_key="champion_models",
            partition=f"{symbol}|{target}",
            metadata={
                "champion_version": version,
                "previous_version": seen.get(name) or "none",
                "service_reload": reload_status,
            },
        )
        for name, ((symbol, target), version) in moved.items()
    ]
    return SensorResult(
        asset_events=events, cursor=json.dumps({n: v for n, (_, v) in champions.items()}, sort_keys=True)
    )


def reload_service(settings: Settings) -> str:
    """POST /admin/reload on the service; an absent service is reported, not fatal (it polls the alias itself)."""
    import httpx

    if not settings.serving.admin_token:
        return "skipped: ITFF_ADMIN_TOKEN is not set (the service still picks the champion up by polling)"
    try:
        answer = httpx.post(
            f"{settings.serving.service_url}/admin/reload",
            headers={"X-API-Token": settings.serving.admin_token.get_secret_value()},
            timeout=10,
        )
    except httpx.HTTPError as error:
        return f"service unreachable at {settings.serving.service_url}: {error.__class__.__name__} (it will poll the alias itself)"
    return "reloaded" if answer.status_code == 200 else f"service answered {answer.status_code}: {answer.text[:200]}"
