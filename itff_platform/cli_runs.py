"""Runs the CLI starts: a named job of the one Definitions, executed in this process, recorded as if launched from
the code location the Dagster UI loads.

`dagster.materialize` runs `__ephemeral_asset_job__` and `execute_in_process` records no origin, so the UI's Runs
page shows such runs under no code location, and cannot re-execute them or let the daemon retry them. Here the run
carries the origin a run launched from `dagster dev -w workspace.yaml` carries: the same location name, repository
and job, so it is listed, filtered and re-executed like any other."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from dagster import AssetKey, DagsterInstance
from dagster._core.definitions.reconstruct import ReconstructableRepository
from dagster._core.execution.api import execute_run
from dagster._core.execution.execute_in_process import merge_run_tags
from dagster._core.execution.execution_result import ExecutionResult
from dagster._core.remote_origin import ManagedGrpcPythonEnvCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

# The one name of this code: workspace.yaml's location_name and pyproject's [tool.dagster] code_location_name say the
# same (a test holds them together).
CODE_LOCATION = "itff_platform"
MODULE = "itff_platform.definitions"
REPOSITORY = "__repository__"  # what Dagster names the repository of a Definitions object
PROJECT_ROOT = Path(__file__).resolve().parents[1]  # where workspace.yaml sits (its working_directory: .)
IN_PROCESS: dict[str, object] = {
    "execution": {"config": {"in_process": {}}}
}  # one process, as `itff` always ran: no worker per step


def remote_origin(job_name: str) -> RemoteJobOrigin:
    """The origin workspace.yaml gives the job: a python_module location named CODE_LOCATION."""
    target = LoadableTargetOrigin(
        executable_path=sys.executable, module_name=MODULE, working_directory=str(PROJECT_ROOT)
    )
    location = ManagedGrpcPythonEnvCodeLocationOrigin(target, CODE_LOCATION)
    return RemoteJobOrigin(RemoteRepositoryOrigin(location, REPOSITORY), job_name)


def execute_job(
    job_name: str,
    instance: DagsterInstance,
    *,
    partition_key: str | None = None,
    partition_range: tuple[str, str] | None = None,
    assets: Sequence[str] | None = None,
    run_config: Mapping | None = None,
    tags: Mapping[str, str] | None = None,
) -> ExecutionResult:
    """Run the named job (or those of its `assets`) for one partition key, or for a range as one run (a single-run
    backfill), in this process against `instance`. Failures are reported on the result, not raised."""
    from itff_platform.definitions import defs

    job = defs.resolve_job_def(job_name)
    selection = {AssetKey(name) for name in assets} if assets else None
    tags = dict(tags or {})
    if partition_range is not None:
        tags |= {
            "dagster/asset_partition_range_start": partition_range[0],
            "dagster/asset_partition_range_end": partition_range[1],
        }
    tags = merge_run_tags(job, partition_key, tags, list(selection) if selection else None, instance, None)
    # Dagster's default executor runs in this process, as `itff` always did; the cluster profile's executor
    # (definitions.py) sends the steps to the workers.
    default_executor = job.executor_def.name == "multi_or_in_process_executor"
    config = {**(IN_PROCESS if default_executor else {}), **(run_config or {})}
    recon = ReconstructableRepository.for_module(MODULE, "defs", str(PROJECT_ROOT)).get_reconstructable_job(job_name)
    run = instance.create_run_for_job(
        job_def=job,
        run_config=config,
        tags=tags,
        asset_selection=selection,
        remote_job_origin=remote_origin(job_name),
        job_code_origin=recon.get_python_origin(),
    )
    return execute_run(recon, run, instance, raise_on_error=False)
