"""`itff` command line. Imports stay inside the commands: dagster alone takes seconds to import."""

from __future__ import annotations

import argparse
import os
import sys


def _materialize(assets_selection: str, quiet: bool):
    """One Dagster run over every partition of the selected assets, in the instance `make dev` shows."""
    from dagster import DagsterInstance, materialize

    from itff_platform.definitions import lake, promotion, training
    from itff_platform.defs.resources import ItffSettingsResource

    assets = {"lake": lake, "training": training, "promotion": promotion}[assets_selection]
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
    from itff_platform.settings import get_settings, redact_uri

    settings = get_settings()
    print(
        f"\nTraining {', '.join(settings.families)} (+ baselines) on {', '.join(settings.targets)} for "
        f"{', '.join(settings.symbols)}: {settings.trials} trials per study ({settings.torch_trials} for torch), "
        f"{settings.wf_folds} walk-forward folds. MLflow: {redact_uri(settings.tracking_uri)}",
        flush=True,
    )
    result = _materialize("training", quiet=False)
    print_training_summary(settings, summary_rows(result))
    return result.success


def run_promotion() -> bool:
    """Challenger vs champion for every symbol x target; print each decision and its reasons."""

    print("\nPromotion (serve a challenger only if it beats the better baseline, and the champion, with 95 % confidence "
          "on the holdout window; trade its rule only if its walk-forward edge after fees is significant):", flush=True)
    result = _materialize("promotion", quiet=True)
    # A single-run backfill reports the same summary on every partition's event: print each model once.
    rows = {row["model"]: row for event in result.get_asset_materialization_events()
            for row in event.materialization.metadata["summary"].value}
    for row in rows.values():
        after = f"champion v{row['champion_after']}" if row["champion_after"] else "no champion"
        bands = row["model"].endswith("-forward_return")
        trading = "" if bands or not row["champion_after"] else (", tradable" if row.get("tradable") else ", served flat (not tradable)")
        print(f"  {row['model']:30s} {row['decision']:8s} v{row['challenger']} vs {row['compared_with']}: {after}{trading}")
        for reason in row["reasons"]:
            print(f"      - {reason}")
    served = [r for r in rows.values() if r["champion_after"]]
    print(f"\nServed: {len(served)} of {len(rows)} models; tradable: {sum(bool(r.get('tradable')) for r in served)}. "
          "Models without a champion get a 400 that names the reason above.")
    return result.success


def replay(start: str, end: str) -> int:
    """Replay START..END day by day, then materialize the monitoring assets so the UI shows the outcome."""
    from datetime import date, datetime, timedelta, timezone

    from itff_platform.monitoring.replay import replay as replay_days
    from itff_platform.monitoring.replay import replay_settings
    from itff_platform.settings import get_settings

    settings = get_settings()
    try:
        first, last = date.fromisoformat(start), date.fromisoformat(end)
        print(f"Replaying {first}..{last} for {', '.join(settings.symbols)}: ingest, features, predictions, outcomes, drift", flush=True)
        summary = replay_days(settings, first, last, progress=lambda line: print(f"  {line}", flush=True))
    except (ValueError, LookupError) as error:
        print(f"replay: {error}", file=sys.stderr)
        return 1
    decisions = summary.decision_table()
    retrains = decisions.filter(decisions["decision"] == "retrain")
    print(f"\n{summary.days} days, {summary.predictions} predictions logged, {summary.silver_rows_written} silver rows rewritten; "
          f"{retrains.height} retrain decision(s) over {decisions.height} (model x day). Reports: {replay_settings(settings).reports_dir}")
    as_of = datetime(last.year, last.month, last.day, tzinfo=timezone.utc) + timedelta(days=1)
    result = _materialize_monitoring(as_of.isoformat(), replay_settings(settings))
    print("Dagster: prediction_outcomes and drift_monitor materialized as of " + as_of.isoformat()
          + ("" if result.success else " (FAILED: see the Dagster UI)"))
    return 0 if result.success else 1


def _materialize_monitoring(as_of: str, settings):
    from dagster import DagsterInstance, materialize

    from itff_platform.definitions import monitoring
    from itff_platform.defs.resources import ItffSettingsResource

    instance = DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else DagsterInstance.ephemeral()
    resource = ItffSettingsResource(evaluation_as_of=as_of, monitoring_dir=str(settings.monitoring_dir),
                                    reports_dir=str(settings.reports_dir))
    return materialize(monitoring, instance=instance, resources={"itff": resource},
                       tags={"itff/trigger": "replay"}, raise_on_error=False,
                       run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}})


def rollback(symbol: str, target: str) -> int:
    from itff_platform.settings import get_settings
    from itff_platform.training.promotion import rollback_champion

    try:
        current, previous = rollback_champion(get_settings(), symbol.upper(), target)
    except LookupError as error:
        print(f"rollback: {error}", file=sys.stderr)
        return 1
    print(f"itff-{symbol.upper()}-{target}: champion alias moved from v{current} back to v{previous}")
    return 0


def sample_request(symbol: str, target: str, bars: int) -> int:
    """A /predict body holding the last `bars` candles of the packaged sample, for curl and smoke tests."""
    import json
    from datetime import datetime, timezone

    from itff_platform.market.sample import SampleCandleSource

    candles = SampleCandleSource().fetch(symbol.upper(), "1h", datetime(2021, 1, 1, tzinfo=timezone.utc), datetime(2025, 1, 1, tzinfo=timezone.utc))
    rows = [{"timestamp": r[0].isoformat(), "open": r[1], "high": r[2], "low": r[3], "close": r[4], "volume": r[5]}
            for r in candles.tail(bars).iter_rows()]
    print(json.dumps({"symbol": symbol.upper(), "target": target, "candles": rows}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="itff", description="ITFF Platform: lake, training and serving for market forecasts.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="the main job: build the lake on the configured source, train, promote champions")
    run.add_argument("--verbose", action="store_true", help="show Dagster's step logs for the lake")
    run.add_argument("--lake-only", action="store_true", help="stop after the lake")
    commands.add_parser("train", help="train every family for every symbol x target on the current lake")
    commands.add_parser("promote", help="challenger vs champion for every symbol x target")
    back = commands.add_parser("rollback", help="restore the previous champion of one model")
    back.add_argument("symbol")
    back.add_argument("target", choices=["direction", "level_up", "forward_return"])
    example = commands.add_parser("sample-request", help="print a /predict body with the sample's last candles")
    example.add_argument("symbol")
    example.add_argument("--target", default="direction")
    example.add_argument("--bars", type=int, default=800, help="800 covers the regime's 744-bar warm-up")
    again = commands.add_parser("replay", help="step through START..END (YYYY-MM-DD) day by day: ingest, features, "
                                "logged predictions, outcomes, drift and retrain decisions")
    again.add_argument("start")
    again.add_argument("end")
    commands.add_parser("settings", help="print the effective settings (ITFF_* environment applied)")
    args = parser.parse_args(argv)

    if args.command == "settings":
        from itff_platform.settings import get_settings

        import json

        print(json.dumps(get_settings().for_display(), indent=2))
        return 0
    if args.command == "sample-request":
        return sample_request(args.symbol, args.target, args.bars)
    if args.command == "rollback":
        return rollback(args.symbol, args.target)
    if args.command == "replay":
        return replay(args.start, args.end)
    # A progress bar per Optuna study; set before the settings are first read.
    os.environ.setdefault("ITFF_PROGRESS_BAR", "true" if sys.stderr.isatty() else "false")
    if args.command == "train":
        return 0 if run_training() else 1
    if args.command == "promote":
        return 0 if run_promotion() else 1
    if args.command == "run":
        if not run_lake(quiet=not args.verbose):
            return 1
        if args.lake_only:
            return 0
        return 0 if run_training() and run_promotion() else 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
