"""`itff` command line. Imports stay inside the commands: dagster alone takes seconds to import."""

from __future__ import annotations

import argparse
import os
import sys


def _materialize(assets_selection: str, quiet: bool):
    """One Dagster run over every partition of the selected assets, in the instance `make dev` shows."""
    from dagster import DagsterInstance, materialize

    from itff_platform.definitions import lake, training
    from itff_platform.defs.resources import ItffSettingsResource

    assets = lake if assets_selection == "lake" else training
    keys = assets[0].partitions_def.get_partition_keys()
    instance = DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else DagsterInstance.ephemeral()
    return materialize(
        assets,
        instance=instance,
        resources={"itff": ItffSettingsResource()},
        tags={"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]},
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING" if quiet else "INFO"}}}},
        raise_on_error=False,
    )


def run_lake(quiet: bool = True) -> bool:
    """Materialize raw, bronze and silver for every partition, as one Dagster run; print a summary."""
    from itff_platform.reporting import print_lake_summary
    from itff_platform.settings import get_settings

    settings = get_settings()
    print(
        f"Materializing raw -> bronze -> silver for {', '.join(settings.symbols)} {settings.interval} "
        f"from source '{settings.source}', lake at {settings.lake_dir}",
        flush=True,
    )
    result = _materialize("lake", quiet)
    print_lake_summary(settings, result)
    return result.success


def run_training(quiet: bool = True) -> bool:
    """Train every family for every symbol x target, as one Dagster run; print the studies side by side."""
    from itff_platform.defs.training_assets import summary_rows
    from itff_platform.reporting import print_training_summary
    from itff_platform.settings import get_settings

    settings = get_settings()
    print(
        f"\nTraining {', '.join(settings.families)} (+ baselines) on {', '.join(settings.targets)} for "
        f"{', '.join(settings.symbols)}: {settings.trials} trials per study ({settings.torch_trials} for torch), "
        f"{settings.wf_folds} walk-forward folds. MLflow: {settings.tracking_uri}",
        flush=True,
    )
    result = _materialize("training", quiet=False)
    print_training_summary(settings, summary_rows(result))
    return result.success


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="itff", description="ITFF Platform: lake, training and serving for market forecasts.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="the main job: materialize the lake on the configured source, then train")
    run.add_argument("--verbose", action="store_true", help="show Dagster's step logs for the lake")
    run.add_argument("--lake-only", action="store_true", help="stop after the lake")
    commands.add_parser("train", help="train every family for every symbol x target on the current lake")
    commands.add_parser("settings", help="print the effective settings (ITFF_* environment applied)")
    args = parser.parse_args(argv)

    if args.command == "settings":
        from itff_platform.settings import get_settings

        print(get_settings().model_dump_json(indent=2))
        return 0
    # A progress bar per Optuna study; set before the settings are first read.
    os.environ.setdefault("ITFF_PROGRESS_BAR", "true" if sys.stderr.isatty() else "false")
    if args.command == "train":
        return 0 if run_training() else 1
    if args.command == "run":
        if not run_lake(quiet=not args.verbose):
            return 1
        return 0 if args.lake_only or run_training() else 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
