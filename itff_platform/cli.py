"""`itff` command line. Imports stay inside the commands: dagster alone takes seconds to import."""

from __future__ import annotations

import argparse
import os
import sys


def _lake_partition_range() -> tuple[list, dict[str, str]]:
    from itff_platform.definitions import lake

    keys = lake[0].partitions_def.get_partition_keys()
    return lake, {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}


def run_lake(quiet: bool = True) -> bool:
    """Materialize raw, bronze and silver for every partition, as one Dagster run; print a summary."""
    from dagster import DagsterInstance, materialize

    from itff_platform.defs.resources import ItffSettingsResource
    from itff_platform.settings import get_settings

    settings = get_settings()
    assets, range_tags = _lake_partition_range()
    instance = DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else DagsterInstance.ephemeral()
    print(
        f"Materializing raw -> bronze -> silver for {', '.join(settings.symbols)} {settings.interval} "
        f"from source '{settings.source}' ({range_tags['dagster/asset_partition_range_start']} .. "
        f"{range_tags['dagster/asset_partition_range_end']}), lake at {settings.lake_dir}",
        flush=True,
    )
    log_level = "WARNING" if quiet else "INFO"
    result = materialize(
        assets,
        instance=instance,
        resources={"itff": ItffSettingsResource()},
        tags=range_tags,
        run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
        raise_on_error=False,
    )
    from itff_platform.reporting import print_lake_summary

    print_lake_summary(settings, result)
    return result.success


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="itff", description="ITFF Platform: lake, training and serving for market forecasts.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the main job: materialize the lake on the configured source")
    run.add_argument("--verbose", action="store_true", help="show Dagster's step logs")
    commands.add_parser("settings", help="print the effective settings (ITFF_* environment applied)")
    args = parser.parse_args(argv)

    if args.command == "settings":
        from itff_platform.settings import get_settings

        print(get_settings().model_dump_json(indent=2))
        return 0
    if args.command == "run":
        return 0 if run_lake(quiet=not args.verbose) else 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
