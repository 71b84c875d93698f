"""`itff` command line. Imports stay inside the commands: dagster alone takes seconds to import."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Mapping
from datetime import UTC
from typing import Any

# Settings whose values are never echoed back in an error message.
SECRET_SETTINGS = {"api_tokens", "admin_token", "tradingview_secret", "mlflow_tracking_uri", "optuna_storage"}
EXIT_INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for Ctrl-C
REGISTRY_PAGE = 1000  # registered models read in one page: far more than symbols x targets ever make
# The regime is `unknown` for its first 744 bars (ITFF_REGIME_VOLATILITY_LOOKBACK 720 + a 24-bar volatility window).
SAMPLE_REQUEST_BARS = 800
SAMPLE_SPAN = (
    "2021-01-01",
    "2025-01-01",
)  # brackets the packaged sample (2021-04 .. 2024-09): the last bars are its end


class CliError(Exception):
    """A problem the user can fix: its message is one line naming the setting or input, and the fix."""


def _settings_problem(error) -> str:
    """A pydantic ValidationError on Settings as one line: ITFF_NAME, what was given, the rule, the fix."""
    from itff_platform.settings import leaf_at

    problems = []
    for item in error.errors():
        leaf = leaf_at(item["loc"])
        field = leaf.name if leaf else str(item["loc"][0]) if item["loc"] else "?"
        given = "" if field in SECRET_SETTINGS else f"={item['input']!r}"
        hint = " (a date is YYYY-MM-DD)" if "date" in item["type"] else ""
        info = leaf.info if leaf else None
        default = (
            ""
            if info is None or info.default_factory is not None
            else f", or unset it for the default {info.default if not isinstance(info.default, str) else repr(info.default)}"
        )
        problems.append(f"ITFF_{field.upper()}{given} is invalid: {item['msg']}{hint}: fix it{default}")
    return "; ".join(problems)


def _one_line(error: BaseException) -> str:
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    if isinstance(error, ValidationError) and error.title == "Settings":
        return _settings_problem(error)
    if isinstance(error, SettingsError):  # e.g. a list that is not JSON
        return f"{error}: lists and objects take JSON, e.g. ITFF_SYMBOLS='[\"BTCUSDT\"]'"
    lines = [line for line in str(error).splitlines() if line.strip()]
    message = lines[0] if lines else ""
    if isinstance(error, (CliError, LookupError, ValueError)):
        return message or type(error).__name__
    return f"{type(error).__name__}: {message} (run with --verbose for the full trace)"


def _preflight(settings) -> None:
    """Check what ingestion needs before any run starts, so a typo or no network is one line, not a failed run."""
    if settings.clustered:
        _cluster_preflight(settings, mlflow=True)
    if settings.source == "sample":
        from itff_platform.market.sample import SAMPLE_INTERVAL, sample_symbols

        unknown = [s for s in settings.symbols if s not in sample_symbols()]
        if unknown:
            raise CliError(
                f"ITFF_SYMBOLS: the packaged sample has {', '.join(sample_symbols())}, not {', '.join(unknown)}: "
                "fix the symbol, or set ITFF_SOURCE=binance or files for other markets"
            )
        if settings.interval != SAMPLE_INTERVAL:
            raise CliError(
                f"ITFF_INTERVAL: the packaged sample holds {SAMPLE_INTERVAL} candles, not {settings.interval!r}"
            )
    if settings.source == "binance":
        import socket
        from urllib.parse import urlsplit

        for setting, url in (
            ("ITFF_BINANCE_BASE_URL", settings.sources.binance.base_url),
            ("ITFF_BINANCE_ARCHIVE_URL", settings.sources.binance.archive_url),
        ):
            host = urlsplit(url).hostname or url
            try:
                socket.getaddrinfo(host, 443)
            except OSError as error:
                raise CliError(
                    f"ITFF_SOURCE=binance: cannot resolve {host} ({setting}): {error.strerror or error}. Without "
                    "network use ITFF_SOURCE=sample (the packaged BTCUSDT/ETHUSDT candles) or ITFF_SOURCE=files "
                    "(CSV/Parquet candles in ITFF_DROP_DIR)"
                ) from error


# The CLI's steps, each a named job of the Definitions (and the assets of it the step runs, where not all).
CLI_JOBS = {
    "lake": ("lake_job", None),
    "training": ("training_job", ["trained_models"]),
    "promotion": ("promotion_job", None),
}


def _log_level(quiet: bool) -> dict:
    return {"loggers": {"console": {"config": {"log_level": "WARNING" if quiet else "INFO"}}}}


def _materialize(assets_selection: str, quiet: bool, only: list[str] | None = None) -> list:
    """One run of the step's named job over every partition (a single-run backfill), in the instance `make dev`
    shows, under the code location it shows; with `only` (some symbol x target keys, from --symbol/--target), one run
    per chosen partition."""
    from dagster import DagsterInstance

    from itff_platform.cli_runs import execute_job
    from itff_platform.definitions import lake, promotion, training

    job, assets = CLI_JOBS[assets_selection]
    keys = {"lake": lake, "training": training, "promotion": promotion}[assets_selection][
        0
    ].partitions_def.get_partition_keys()
    instance = DagsterInstance.get()  # DAGSTER_HOME is the project's (see _use_project_instance)
    options: dict[str, Any] = dict(assets=assets, run_config=_log_level(quiet))
    if only is not None and set(only) != set(keys):
        return [execute_job(job, instance, partition_key=key, **options) for key in keys if key in only]
    return [execute_job(job, instance, partition_range=(keys[0], keys[-1]), **options)]


def run_lake(quiet: bool = True) -> bool:
    """Materialize raw, bronze and silver for every partition, as one Dagster run; print a summary."""
    from itff_platform.reporting import lake_skip_line, print_lake_summary
    from itff_platform.settings import get_settings

    settings = get_settings()
    print(
        f"Materializing raw -> bronze -> silver for {', '.join(settings.symbols)} {settings.interval} "
        f"from source '{settings.source}', lake at {settings.lake.root}",
        flush=True,
    )
    started = time.perf_counter()
    unchanged = _unchanged_lake_partitions(settings)
    if unchanged:
        print(
            f"Lake: {unchanged} of {unchanged} partitions unchanged (same source rows, settings and code), skipped: "
            f"no Dagster run needed ({time.perf_counter() - started:.1f} s)"
        )
        print_lake_summary(settings, None)
        return True
    result = _materialize("lake", quiet)[0]
    print(lake_skip_line(result, time.perf_counter() - started))
    print_lake_summary(settings, result)
    return result.success


def _unchanged_lake_partitions(settings) -> int:
    """The number of lake partitions when every one of them, in every layer, has the inputs it was built from
    (lake.incremental), else 0. Then no Dagster run is needed at all, and the assets keep the materializations that
    built them. Asked of the packaged sample only: a files source sets bad files aside as it reads them, and a live
    source has a month in progress; their runs still skip the unchanged partitions inside."""
    if settings.source != "sample":
        return 0
    from itff_platform.defs.partitions import lake_partitions, months_by_symbol
    from itff_platform.lake.layers import unchanged_lake
    from itff_platform.market.sample import SampleCandleSource

    keys = lake_partitions(settings).get_partition_keys()
    return len(keys) if unchanged_lake(settings, SampleCandleSource(), months_by_symbol(keys)) else 0


def run_training(quiet: bool = True, only: list[str] | None = None) -> bool:
    """Train every family for every symbol x target, as one Dagster run; print the studies side by side."""
    from itff_platform.defs.training_assets import summary_rows
    from itff_platform.reporting import print_training_summary
    from itff_platform.settings import get_settings, redact_uri

    settings = get_settings()
    chosen = only or [f"{s}|{t}" for s in settings.symbols for t in settings.training.targets]
    print(
        f"\nTraining {', '.join(settings.training.families)} (+ baselines) for {', '.join(chosen)}: {settings.training.trials} trials per study ({settings.training.torch_trials} for torch), "
        f"{settings.training.wf_folds} walk-forward folds. MLflow: {redact_uri(settings.tracking_uri)}",
        flush=True,
    )
    started = time.perf_counter()
    results = _materialize("training", quiet=False, only=only)
    print_training_summary(
        settings, [row for result in results for row in summary_rows(result)], time.perf_counter() - started
    )
    return all(result.success for result in results)


def run_promotion(only: list[str] | None = None) -> bool:
    """Challenger vs champion for every symbol x target (or those chosen); print each decision, its reasons, and
    for a model left without a champion what to do."""
    from itff_platform.rules import model_key, no_champion_remedy, task_of

    print(
        "\nPromotion (serve a challenger only if it beats the better baseline, and the champion, with 95 % confidence "
        "on the holdout window; trade its rule only if its walk-forward edge after fees is significant):",
        flush=True,
    )
    started = time.perf_counter()
    results = _materialize("promotion", quiet=True, only=only)
    # Each partition's event carries its own decision (and only it); keyed by model, each is printed once.
    rows = {
        row["model"]: row
        for result in results
        for event in result.get_asset_materialization_events()
        for row in event.materialization.metadata["summary"].value
    }
    for row in rows.values():
        symbol, target = model_key(row["model"])
        after = f"champion v{row['champion_after']}" if row["champion_after"] else "no champion"
        bands = task_of(target) == "regression"
        trading = (
            ""
            if bands or not row["champion_after"]
            else (", tradable" if row.get("tradable") else ", served flat (not tradable)")
        )
        judged = f"v{row['challenger']} vs {row['compared_with']}" if row["challenger"] else "no new version"
        print(f"  {row['model']:30s} {row['decision']:8s} {judged}: {after}{trading}")
        for reason in row["reasons"]:
            print(f"      - {reason}")
        if not row["champion_after"]:
            print(f"      what to do: {no_champion_remedy(symbol, target, row['challenger'])}")
    served = [r for r in rows.values() if r["champion_after"]]
    print(
        f"\nServed: {len(served)} of {len(rows)} models; tradable: {sum(bool(r.get('tradable')) for r in served)}. "
        "Models without a champion get a 400 that names the reason above."
    )
    kept = sum(r["decision"] == "kept" for r in rows.values())
    print(
        f"Promotion: {kept} of {len(rows)} models had no new version to judge and kept their champion (or none), "
        f"{len(rows) - kept} judged ({time.perf_counter() - started:.1f} s)"
    )
    return all(result.success for result in results)


def force_promotion(settings, symbol: str | None, target: str | None, version: str) -> int:
    from itff_platform.training.promotion import force_champion

    if not (symbol and target):
        raise CliError("--force VERSION needs --symbol and --target: it forces one model's champion")
    _require_model(settings, symbol, target)
    decision = force_champion(settings, symbol, target, version)
    before = f"v{decision.champion_before}" if decision.champion_before else "none"
    print(
        f"{decision.name}: champion forced to v{version} (was {before}), manifest written, recorded as forced; "
        f"`itff rollback {symbol} {target}` undoes it"
    )
    return 0


def _chosen_partitions(settings, symbol: str | None, target: str | None) -> list[str] | None:
    """The symbol x target keys --symbol/--target pick; None for all."""
    if symbol is None and target is None:
        return None
    if symbol is not None and symbol not in settings.symbols:
        raise CliError(
            f"--symbol {symbol}: not among the configured symbols (ITFF_SYMBOLS): {', '.join(settings.symbols)}"
        )
    if target is not None and target not in settings.training.targets:
        raise CliError(
            f"--target {target}: not among the configured targets (ITFF_TARGETS): {', '.join(settings.training.targets)}"
        )
    return [
        f"{s}|{t}"
        for s in settings.symbols
        for t in settings.training.targets
        if symbol in (None, s) and target in (None, t)
    ]


def replay(start: str, end: str) -> int:
    """Replay START..END day by day, then materialize the monitoring assets so the UI shows the outcome."""
    from datetime import date, datetime, timedelta

    from itff_platform.monitoring.replay import replay as replay_days
    from itff_platform.monitoring.replay import replay_settings
    from itff_platform.settings import get_settings

    settings = get_settings()
    try:
        first, last = date.fromisoformat(start), date.fromisoformat(end)
        print(
            f"Replaying {first}..{last} for {', '.join(settings.symbols)}: ingest, features, predictions, outcomes, drift",
            flush=True,
        )
        summary = replay_days(settings, first, last, progress=lambda line: print(f"  {line}", flush=True))
    except (ValueError, LookupError) as error:
        print(f"replay: {error}", file=sys.stderr)
        return 1
    decisions = summary.decision_table()
    retrains = decisions.filter(decisions["decision"] == "retrain")
    print(
        f"\n{summary.days} days, {summary.predictions} predictions logged, {summary.silver_rows_written} silver rows rewritten; "
        f"{retrains.height} retrain decision(s) over {decisions.height} (model x day). Reports: {replay_settings(settings).reports_dir}"
    )
    as_of = datetime(last.year, last.month, last.day, tzinfo=UTC) + timedelta(days=1)
    result = _materialize_monitoring(as_of.isoformat(), replay_settings(settings))
    print(
        "Dagster: prediction_outcomes and drift_monitor materialized as of "
        + as_of.isoformat()
        + ("" if result.success else " (FAILED: see the Dagster UI)")
    )
    return 0 if result.success else 1


def paper_replay(settings, days: int, url: str | None) -> int:
    """The autopilot over the last `days` days against a real service, then its report; prints the headline."""
    from itff_platform.trading.paper_replay import paper_replay as replay_trading

    started = time.perf_counter()
    print(f"Paper-trading replay: the autopilot over the last {days} days of {', '.join(settings.symbols)}", flush=True)
    done = replay_trading(settings, days, url=url, progress=lambda line: print(f"  {line}", flush=True))
    print()
    for name, value in done.report.headline().items():
        print(f"  {name:24s} {value:.4g}" if isinstance(value, float) else f"  {name:24s} {value}")
    verdict = {True: "pass", False: "FAIL", None: "nothing to judge"}
    print("Acceptance (runbook 004): " + "; ".join(f"{k} {verdict[v]}" for k, v in done.report.acceptance().items()))
    print(f"Report: {done.folder} ({time.perf_counter() - started:.1f} s)")
    return 0


def _materialize_monitoring(as_of: str | None = None, settings=None, trigger: str = "replay"):
    """evaluation_job: prediction_outcomes and drift_monitor; as of a replay's last day, on its own log, or now."""
    from dagster import DagsterInstance

    from itff_platform.cli_runs import execute_job

    config = (
        {}
        if settings is None
        else {
            "evaluation_as_of": as_of,
            "monitoring_dir": str(settings.monitoring.root),
            "reports_dir": str(settings.reports_dir),
        }
    )
    return execute_job(
        "evaluation_job",
        DagsterInstance.get(),
        tags={"itff/trigger": trigger},
        run_config={"resources": {"itff": {"config": config}}, **_log_level(True)},
    )


def run_monitoring() -> bool:
    """After `itff run`: materialize the monitoring assets too, so the UI shows every asset materialized. Without
    live predictions yet they say so; drift needs none."""
    result = _materialize_monitoring(trigger="run")
    outcomes: Mapping[str, Any] = next(
        (
            e.materialization.metadata
            for e in result.get_asset_materialization_events()
            if e.asset_key.to_user_string() == "prediction_outcomes"
        ),
        {},
    )
    status = outcomes["status"].value if "status" in outcomes else "see the Dagster UI"
    print(
        f"\nMonitoring: prediction_outcomes and drift_monitor {'materialized' if result.success else 'FAILED'} "
        f"(evaluation_job): {status}"
    )
    return result.success


def run_maintenance() -> bool:
    """Last step of `itff run`: lake_maintenance_job (compaction, vacuum past the retention, silver against bronze).
    After a fresh run it finds nothing to rewrite, so the table versions the run recorded stay current."""
    from dagster import DagsterInstance

    from itff_platform.cli_runs import execute_job

    result = execute_job(
        "lake_maintenance_job", DagsterInstance.get(), tags={"itff/trigger": "run"}, run_config=_log_level(True)
    )
    meta = {
        k: v.value for e in result.get_asset_materialization_events() for k, v in e.materialization.metadata.items()
    }
    print(
        f"Lake maintenance {'done' if result.success else 'FAILED'} (lake_maintenance_job): {maintenance_outcome(meta)}"
    )
    return result.success


def maintenance_outcome(meta: dict) -> str:
    """What lake_maintenance did, in words. Right after a build it reclaims nothing: compaction and checkpoints add
    files, and the files they supersede are only vacuumed once older than the retention, so the lake grows a little."""
    if "bytes_reclaimed" not in meta:
        return "see the Dagster UI"
    reclaimed, vacuumed = meta["bytes_reclaimed"], meta.get("files_vacuumed", 0)
    if reclaimed >= 0:
        return f"{reclaimed:,} bytes reclaimed, {vacuumed} superseded file(s) vacuumed"
    return (
        f"nothing reclaimed yet: checkpoints and compacted files added {-reclaimed:,} bytes; the files they "
        f"supersede are vacuumed once older than ITFF_LAKE_VACUUM_RETENTION_HOURS ({meta.get('retention_hours')} h)"
    )


def _use_project_instance(settings) -> None:
    """Runs go into the instance the Dagster UI reads: DAGSTER_HOME, else the project root (ITFF_HOME) that holds
    dagster.yaml. A throwaway instance would hide them from the UI, so without either the CLI refuses."""
    if os.environ.get("DAGSTER_HOME"):
        return
    home = settings.home.resolve()
    if not (home / "dagster.yaml").is_file():
        raise CliError(
            f"DAGSTER_HOME is not set and {home} holds no dagster.yaml: run itff from the project root, "
            "or set ITFF_HOME (or DAGSTER_HOME) to it, so the runs land in the instance the Dagster UI shows"
        )
    os.environ["DAGSTER_HOME"] = str(home)
    # dagster.yaml's storage folders (.dagster/...) are relative, and Dagster resolves them against the working
    # directory: work from the project root, as `make` does, with ITFF_HOME pinned for every Settings() made later.
    os.environ.setdefault("ITFF_HOME", str(home))
    os.chdir(home)


def _registered_models(settings) -> list[str]:
    """The registry's model names; a CliError when there is no registry yet."""
    from pathlib import Path

    uri = settings.tracking_uri
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise CliError(
            f"no MLflow registry at {uri.removeprefix('sqlite:///')}: run `itff train` (or `itff run`) first, "
            "or point ITFF_HOME / ITFF_MLFLOW_TRACKING_URI at the project"
        )
    from mlflow import MlflowClient

    return sorted(m.name for m in MlflowClient(uri).search_registered_models(max_results=REGISTRY_PAGE))


def _require_model(settings, symbol: str, target: str) -> str:
    from itff_platform.rules import registered_name

    name = registered_name(symbol, target)
    known = _registered_models(settings)
    if name not in known:
        raise CliError(
            f"{name} is not a registered model. Registered: {', '.join(known) or 'none (run itff train first)'}; "
            f"configured symbols (ITFF_SYMBOLS): {', '.join(settings.symbols)}"
        )
    return name


def rollback(symbol: str, target: str) -> int:
    from itff_platform.settings import get_settings
    from itff_platform.training.promotion import rollback_champion

    settings = get_settings()
    name = _require_model(settings, symbol.upper(), target)
    try:
        current, previous = rollback_champion(settings, symbol.upper(), target)
    except LookupError as error:
        print(f"rollback: {error}", file=sys.stderr)
        return 1
    print(f"{name}: champion alias moved from v{current} back to v{previous}")
    return 0


def relocate_registry(settings, explicit: bool = False) -> int:
    """Rebase the registry's recorded paths if the project folder moved; say so in one line."""
    from itff_platform.registry_paths import describe, relocate, sqlite_file

    moves = relocate(settings)
    if moves:
        print(describe(moves), flush=True)
    elif explicit and sqlite_file(settings) is None:
        print("the MLflow store is not a local SQLite file: it records no local paths")
    elif explicit:
        print(
            f"nothing to rewrite: the registry's recorded paths already point at {settings.tracking.mlflow_dir / 'artifacts'}"
        )
    return 0


TARGETS = ("direction", "level_up", "forward_return")


def sample_request(symbol: str, target: str, bars: int) -> int:
    """A /predict body holding the last `bars` candles of the packaged sample, for curl and smoke tests."""
    import json
    from datetime import datetime

    from itff_platform.market.sample import SAMPLE_INTERVAL, SampleCandleSource, sample_symbols

    if target not in TARGETS:
        raise CliError(f"TARGET {target!r} is not one of {', '.join(TARGETS)}")
    if symbol.upper() not in sample_symbols():
        raise CliError(f"SYMBOL {symbol!r}: the packaged sample has {', '.join(sample_symbols())}")
    if bars < 1:
        raise CliError(f"--bars {bars}: give at least 1 ({SAMPLE_REQUEST_BARS} covers the regime's 744-bar warm-up)")

    start, end = (datetime.fromisoformat(day).replace(tzinfo=UTC) for day in SAMPLE_SPAN)
    candles = SampleCandleSource().fetch(symbol.upper(), SAMPLE_INTERVAL, start, end)
    rows = [
        {"timestamp": r[0].isoformat(), "open": r[1], "high": r[2], "low": r[3], "close": r[4], "volume": r[5]}
        for r in candles.tail(bars).iter_rows()
    ]
    print(json.dumps({"symbol": symbol.upper(), "target": target, "candles": rows}))
    return 0


def _parser() -> argparse.ArgumentParser:
    # --verbose is accepted before or after the command; SUPPRESS keeps a subcommand's default from hiding the global one.
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        default=argparse.SUPPRESS,
        help="full tracebacks on errors (and, for run, Dagster's step logs)",
    )
    parser = argparse.ArgumentParser(
        prog="itff", parents=[verbose], description="ITFF Platform: lake, training and serving for market forecasts."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, text: str, func) -> argparse.ArgumentParser:
        """A subcommand; `func(args)` runs it and returns the exit code."""
        sub = commands.add_parser(name, help=text, description=text, parents=[verbose])
        sub.set_defaults(func=func)
        return sub

    run = command("run", "the main job: build the lake on the configured source, train, promote champions", _cmd_run)
    run.add_argument("--lake-only", action="store_true", help="stop after the lake")

    def positive(text: str) -> int:
        if not text.isdigit() or int(text) < 1:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
        return int(text)

    def choose(sub: argparse.ArgumentParser, trials_help: str) -> None:
        sub.add_argument("--symbol", type=str.upper, help="only this symbol (one of ITFF_SYMBOLS)")
        sub.add_argument("--target", choices=TARGETS, help="only this target (one of ITFF_TARGETS)")
        sub.add_argument("--trials", type=positive, help=trials_help)

    train = command(
        "train",
        "train every family for every symbol x target on the current lake (or those chosen)",
        _cmd_train_or_promote,
    )
    choose(train, "Optuna trials per study, instead of ITFF_TRIALS")
    promote = command(
        "promote",
        "challenger vs champion for every symbol x target (or those chosen); "
        "--force VERSION serves a version without the test",
        _cmd_train_or_promote,
    )
    choose(promote, "retrain with this many trials per study first (ITFF_TRIALS), then promote")
    promote.add_argument(
        "--force",
        metavar="VERSION",
        type=positive,
        help="make VERSION the champion of --symbol/--target without the promotion test: the manifest "
        "is written, the alias moved, and the decision recorded as forced (rollback undoes it)",
    )
    back = command("rollback", "restore the previous champion of one model", _cmd_rollback)
    back.add_argument("symbol")
    back.add_argument("target", choices=TARGETS)
    example = command("sample-request", "print a /predict body with the sample's last candles", _cmd_sample_request)
    example.add_argument("symbol", help="a symbol of the packaged sample: BTCUSDT or ETHUSDT")
    example.add_argument("target", nargs="?", help=f"one of {', '.join(TARGETS)} (default direction; or --target)")
    example.add_argument("--target", dest="target_option", metavar="TARGET", help="the same as the positional TARGET")
    example.add_argument(
        "--bars",
        type=int,
        default=SAMPLE_REQUEST_BARS,
        help=f"{SAMPLE_REQUEST_BARS} covers the regime's 744-bar warm-up",
    )
    again = command(
        "replay",
        "step through START..END (YYYY-MM-DD) day by day: ingest, features, "
        "logged predictions, outcomes, drift and retrain decisions",
        _cmd_replay,
    )
    again.add_argument("start", nargs="?")
    again.add_argument("end", nargs="?")
    again.add_argument(
        "--trade",
        action="store_true",
        help="instead: drive the paper-trading autopilot over the last --days of silver against a real "
        "bentoml serve (started here, with an account of its own, or --url), then write the paper_performance "
        "report into reports/replay/paper-START-END",
    )
    again.add_argument("--days", type=positive, default=30, help="with --trade: days replayed (default 30)")
    again.add_argument("--url", help="with --trade: a running service to trade on (its token: ITFF_API_TOKENS)")
    worker = command(
        "study-worker",
        "join an Optuna study (study_workers, docs/scale-out-optuna.md) from this machine and run its trials "
        "until its budget is complete",
        _cmd_study_worker,
    )
    worker.add_argument("study", help="the study's name (its MLflow run's optuna_study tag)")
    worker.add_argument("--storage", help="the Optuna storage URL (default: ITFF_OPTUNA_STORAGE, the settings')")
    worker.add_argument("--threads", type=positive, help="threads per trial (default: cores / study_workers)")
    command("settings", "print the effective settings (ITFF_* environment applied; secrets hidden)", _cmd_settings)
    servers = command(
        "cluster",
        "the cluster profile's Postgres and Redis on this machine, in ITFF_CLUSTER_DIR (make cluster): start them "
        "(up), stop them (down), or check that Postgres, Redis and the MLflow server answer (check)",
        _cmd_cluster,
    )
    servers.add_argument("action", choices=["up", "down", "check"])
    command(
        "relocate",
        "after moving or copying the project folder: point the MLflow registry's recorded artifact "
        "paths at the current folder (run, train, promote, rollback, replay, make dev and make serve do it themselves)",
        _cmd_relocate,
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.verbose = getattr(args, "verbose", False)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as error:
        if args.verbose:
            raise
        print(f"itff {args.command}: {_one_line(error)}", file=sys.stderr)
        return 1


# --- the commands, each set as its subparser's func. The steps they share, in the order they run: the settings
# (validated up front, so a bad ITFF_* value is one line naming it), the registry's paths rebased onto the project
# folder, then the Dagster instance the UI shows, for commands that record runs.


def _settings(args: argparse.Namespace, progress_bar: bool = False):
    if progress_bar:  # a progress bar per Optuna study; set before the settings are first read
        os.environ.setdefault("ITFF_PROGRESS_BAR", "true" if sys.stderr.isatty() else "false")
    if getattr(args, "trials", None):
        if getattr(args, "force", None):
            raise CliError("--trials retrains and --force skips the test: give one of them")
        os.environ["ITFF_TRIALS"] = str(args.trials)
    from itff_platform.settings import get_settings

    return get_settings()


def _project_settings(args: argparse.Namespace, progress_bar: bool = False):
    """The settings, with the project's own MLflow store following the project folder."""
    settings = _settings(args, progress_bar)
    if settings.tracking.mlflow_tracking_uri is None and not settings.clustered:  # the cluster's is a server
        relocate_registry(settings)
    return settings


def _cmd_sample_request(args: argparse.Namespace) -> int:
    if args.target and args.target_option and args.target != args.target_option:
        raise CliError(f"TARGET given twice: {args.target!r} and --target {args.target_option!r}; give one")
    return sample_request(args.symbol, args.target or args.target_option or "direction", args.bars)


def _cmd_settings(args: argparse.Namespace) -> int:
    import json

    print(json.dumps(_settings(args).for_display(), indent=2))
    return 0


def _cluster_preflight(settings, mlflow: bool) -> None:
    from itff_platform.cluster.preflight import Unreachable, preflight

    try:
        preflight(settings, mlflow=mlflow)
    except Unreachable as error:
        raise CliError(str(error)) from None


def _cmd_cluster(args: argparse.Namespace) -> int:
    from itff_platform.cluster import postgres, redis
    from itff_platform.settings import redact_uri

    settings = _settings(args)
    folder = settings.cluster.cluster_dir
    if args.action == "up":
        postgres.start(folder / "pg", settings.cluster.postgres_url)
        redis.start(folder / "redis", settings.cluster.redis_url)
        print(
            f"Postgres {redact_uri(settings.cluster.postgres_url)} (databases {', '.join(postgres.DATABASES)}), "
            f"Redis {redact_uri(settings.cluster.redis_url)}; data in {folder}"
        )
    elif args.action == "down":
        redis.stop(folder / "redis")
        postgres.stop(folder / "pg")
    else:
        _cluster_preflight(settings, mlflow=True)
        print("Postgres, Redis and the MLflow server answer")
    return 0


def _cmd_study_worker(args: argparse.Namespace) -> int:
    from itff_platform.training.worker import run_args

    return run_args(args)


def _cmd_relocate(args: argparse.Namespace) -> int:
    return relocate_registry(_settings(args), explicit=True)


def _cmd_rollback(args: argparse.Namespace) -> int:
    _project_settings(args)
    return rollback(args.symbol, args.target)


def _cmd_replay(args: argparse.Namespace) -> int:
    settings = _project_settings(args)
    if args.trade:
        if args.start or args.end:
            raise CliError("replay --trade takes --days (the last days of silver), not START END")
        return paper_replay(settings, args.days, args.url)
    if not (args.start and args.end):
        raise CliError("replay: give START and END (YYYY-MM-DD), or --trade for the paper-trading replay")
    _use_project_instance(settings)
    _preflight(settings)
    return replay(args.start, args.end)


def _cmd_train_or_promote(args: argparse.Namespace) -> int:
    settings = _project_settings(args, progress_bar=True)
    if args.command == "promote" and args.force:  # the registry only: no Dagster run
        return force_promotion(settings, args.symbol, args.target, str(args.force))
    _use_project_instance(settings)  # what follows records Dagster runs
    only = _chosen_partitions(settings, args.symbol, args.target)
    if (args.command == "train" or args.trials) and not run_training(only=only):
        return 1
    if args.command == "train":
        return 0
    return 0 if run_promotion(only=only) else 1


def _cmd_run(args: argparse.Namespace) -> int:
    settings = _project_settings(args, progress_bar=True)
    _use_project_instance(settings)
    _preflight(settings)
    started = time.perf_counter()
    if not run_lake(quiet=not args.verbose):
        return 1
    if args.lake_only:
        return 0
    succeeded = run_training() and run_promotion() and run_monitoring() and run_maintenance()
    print(
        f"\nitff run: {time.perf_counter() - started:.1f} s in all (lake, training, promotion, monitoring and "
        "maintenance; what was unchanged is skipped, see the Lake, Training and Promotion lines)"
    )
    return 0 if succeeded else 1


if __name__ == "__main__":
    sys.exit(main())
