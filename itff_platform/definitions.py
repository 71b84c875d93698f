"""The one Definitions object: `dagster dev -w workspace.yaml` loads it."""

import warnings

from dagster import AssetCheckKey, AssetSelection, Definitions, define_asset_job

# Single-run backfills and the neighbour-month partition mapping are marked beta; we rely on both knowingly.
warnings.filterwarnings("ignore", message=".*is currently in beta.*")

from itff_platform.defs.automation import automation, maintenance_schedule
from itff_platform.defs.executor import cluster_executor
from itff_platform.defs.lake_assets import lake_assets, maintenance_assets
from itff_platform.defs.metadata import OWNERS
from itff_platform.defs.monitoring_assets import monitoring_assets
from itff_platform.defs.resources import ItffSettingsResource
from itff_platform.defs.trading_assets import autopilot_job, paper_performance, trading_automation
from itff_platform.defs.training_assets import promotion_assets, training_assets
from itff_platform.settings import get_settings

settings = get_settings()
lake = lake_assets(settings)
training = training_assets(settings)
promotion = promotion_assets(settings)
monitoring = monitoring_assets()
maintenance = maintenance_assets(settings)


def job(name: str, selection, description: str):
    return define_asset_job(name, selection=selection, description=description, owners=OWNERS)


# Every run has one of these names, in the UI as from the CLI (itff_platform/cli_runs.py): never
# __ephemeral_asset_job__.
lake_job = job(
    "lake_job",
    ["raw_candles", "bronze_candles", "silver_features"],
    "raw -> bronze -> silver for the chosen (symbol, month) partitions, with their checks: `itff run` "
    "(all partitions, one run), the daily refresh and the drop-folder sensor.",
)
training_job = job(
    "training_job",
    ["trained_models", "champion_models"],
    "Train every family for the chosen symbol x target partitions, then decide the champions: the retrain "
    "sensors run it whole; `itff train` runs its trained_models only.",
)
promotion_job = job(
    "promotion_job",
    ["champion_models"],
    "Challenger vs champion for the chosen symbol x target partitions, without retraining: `itff promote` "
    "and the promotion step of `itff run`.",
)
evaluation_job = job(
    "evaluation_job",
    ["prediction_outcomes", "drift_monitor", "paper_performance"],
    "Live quality of the logged predictions, drift of every champion, and the paper account's report: weekly, "
    "after `itff run`, and after `itff replay`.",
)
# Housekeeping apart from lake_job, so a backfill or a daily refresh never vacuums mid-way: compaction, vacuum, and the
# check that silver holds what bronze holds (which also runs with every lake_job). `itff run` runs it last.
maintenance_job = job(
    "lake_maintenance_job",
    AssetSelection.assets("lake_maintenance")
    | AssetSelection.checks(AssetCheckKey(lake[2].key, "silver_matches_bronze")),
    "Compact, vacuum and checkpoint every lake table, and check silver against bronze: on its schedule, "
    "and as the last step of `itff run`.",
)
paper_performance_job = job(
    "paper_performance_job",
    ["paper_performance"],
    "The paper account's report (runbook 004's 30-day validation): daily, on its schedule.",
)
schedules, sensors = automation(settings, lake_job, training_job, evaluation_job)
schedules.append(maintenance_schedule(settings, maintenance_job))
trading_schedules, trading_sensors = trading_automation(settings, paper_performance_job)
schedules += trading_schedules
sensors += trading_sensors

defs = Definitions(
    assets=[*lake, *training, *promotion, *monitoring, *maintenance, paper_performance],
    jobs=[lake_job, training_job, promotion_job, evaluation_job, maintenance_job, paper_performance_job, autopilot_job],
    schedules=schedules,
    sensors=sensors,
    resources={"itff": ItffSettingsResource()},
    # The cluster profile runs steps on celery workers; embedded keeps Dagster's default (one process per step).
    executor=cluster_executor(settings) if settings.clustered else None,
)
