"""The Celery worker's app: `celery -A itff_platform.defs.celery_worker worker -Q dagster` (Procfile.cluster).
Each task executes one Dagster step against the run's instance (the Postgres one in DAGSTER_HOME)."""

from dagster_celery.tasks import create_task

from itff_platform.defs.executor import celery_app
from itff_platform.settings import get_settings

app = celery_app(get_settings())
execute_plan = create_task(app)
