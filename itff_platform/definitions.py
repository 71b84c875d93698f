"""The one Definitions object: `dagster dev -w workspace.yaml` loads it."""

import warnings

from dagster import AssetCheckKey, AssetSelection, Definitions, define_asset_job

# Single-run backfills and the neighbour-month partition mapping are marked beta; we rely on both knowingly.
warnings.filterwarnings("ignore", message=".*is currently in beta.*")

from itff_platform.defs.automation import automation, maintenance_schedule
from itff_platform.defs.lake_assets import lake_assets, maintenance_assets
from itff_platform.defs.monitoring_assets import monitoring_assets
from itff_platform.defs.training_assets import promotion_assets, training_assets
from itff_platform.defs.resources import ItffSettingsResource
from itff_platform.settings import get_settings

settings = get_settings()
lake = lake_assets(settings)
training = training_assets(settings)
promotion = promotion_assets(settings)
monitoring = monitoring_assets()
maintenance = maintenance_assets(settings)

lake_job = define_asset_job("lake_job", selection=["raw_candles", "bronze_candles", "silver_features"])
training_job = define_asset_job("training_job", selection=["trained_models", "champion_models"])
evaluation_job = define_asset_job("evaluation_job", selection=["prediction_outcomes", "drift_monitor"])
# Housekeeping apart from lake_job, so `itff run` and backfills never vacuum: compaction, vacuum, and the check
# that silver holds what bronze holds (which also runs with every lake_job).
maintenance_job = define_asset_job("lake_maintenance_job", selection=AssetSelection.assets("lake_maintenance")
                                   | AssetSelection.checks(AssetCheckKey(lake[2].key, "silver_matches_bronze")))
schedules, sensors = automation(settings, lake_job, training_job, evaluation_job)
schedules.append(maintenance_schedule(settings, maintenance_job))

defs = Definitions(
    assets=[*lake, *training, *promotion, *monitoring, *maintenance],
    jobs=[lake_job, training_job, evaluation_job, maintenance_job],
    schedules=schedules,
    sensors=sensors,
    resources={"itff": ItffSettingsResource()},
)
