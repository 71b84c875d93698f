"""Where steps run under the cluster profile: dagster-celery workers fed through Redis (docs/scale-out.md says why
celery, not dask or k8s, on one machine). The embedded profile keeps Dagster's default executor.

The run's orchestrator (the CLI, or the run worker the daemon launches) and every worker build the same Celery app
from the same settings: celery_app() here, which `celery -A itff_platform.defs.celery_worker worker` loads."""

from __future__ import annotations

from typing import Any

from itff_platform.settings import Settings

# A worker that dies mid-step (kill -9, OOM) must not lose the step: acks_late keeps the task in Redis until it
# finished; when the worker's pool process died, retry_on_worker_lost sends the task again (its max_retries, 3,
# bound it: a step that kills every worker then fails the run, which run_retries may launch again), and
# reject_on_worker_lost requeues it should that send fail. Redis redelivers an unacknowledged task of a worker that
# vanished whole after visibility_timeout: longer than the longest step, or a slow step would run twice.
CELERY_OPTIONS: dict[str, Any] = {
    "task_acks_late": True,
    "task_retry_on_worker_lost": True,
    "task_reject_on_worker_lost": True,
    "task_annotations": {"*": {"default_retry_delay": 10}},  # that retry's delay: celery's default is 3 minutes
    "worker_prefetch_multiplier": 1,  # a worker holds one step at a time: the others stay free for the queue
    "broker_transport_options": {"visibility_timeout": 6 * 3600},
    "broker_connection_retry_on_startup": True,
}


def executor_config(settings: Settings) -> dict[str, Any]:
    """The celery executor's config: broker and result backend both on ITFF_REDIS_URL."""
    return {
        "broker": settings.cluster.redis_url,
        "backend": settings.cluster.redis_url,
        "config_source": CELERY_OPTIONS,
    }


def cluster_executor(settings: Settings):
    """dagster-celery's executor, configured from the settings (the broker URL stays out of the run config)."""
    from dagster_celery import celery_executor

    return celery_executor.configured(executor_config(settings), name="itff_celery")


def celery_app(settings: Settings):
    """The Celery app both ends use: the one dagster-celery's executor makes from the same config."""
    from dagster._core.execution.retries import RetryMode
    from dagster_celery.executor import CeleryExecutor
    from dagster_celery.make_app import make_app

    config = executor_config(settings)
    return make_app(CeleryExecutor(retries=RetryMode.ENABLED, **config).app_args())
