"""Paper trading in Dagster, thin over itff_platform.trading: the autopilot sensor and job, and the daily
paper_performance asset (runbook 004's 30-day validation report).

paper_autopilot (sensor) -> autopilot_job for each symbol's silver bars it has not handled (its cursor)
daily_paper_performance  -> paper_performance_job: the report of the paper account so far

Both start stopped, like the rest of the automation (ITFF_AUTOMATION_ON=true, or switch them on in the UI)."""

import json
from datetime import datetime, timedelta

import polars as pl
from dagster import (
    Config,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    MaterializeResult,
    MetadataValue,
    OpExecutionContext,
    RunRequest,
    SensorResult,
    SkipReason,
    asset,
    job,
    op,
    schedule,
    sensor,
)

from itff_platform.defs.metadata import OWNERS
from itff_platform.defs.resources import ItffSettingsResource
from itff_platform.settings import Settings

TRIGGER = "itff/trigger"
SYMBOL_TAG = "dagster/partition/symbol"  # what deploy/native/dagster.yaml's per-symbol run limit counts


class AutopilotConfig(Config):
    symbol: str
    after: str | None = None  # ISO time of the last bar already handled (exclusive); None: only `through`
    through: str  # ISO time of the newest bar to decide on


@op(description="Ask /consensus for each bar in (after, through] of the symbol; paper-order where it allows.")
def autopilot_op(context: OpExecutionContext, config: AutopilotConfig, itff: ItffSettingsResource) -> None:
    from itff_platform.trading.autopilot import ServiceClient, client_token, run_autopilot

    settings = itff.settings()
    through = datetime.fromisoformat(config.through)
    bar = timedelta(seconds=settings.interval_seconds)
    after = datetime.fromisoformat(config.after) if config.after else through - bar  # exclusive: only `through`
    client = ServiceClient(settings.serving.service_url, client_token(settings))
    try:
        decisions = run_autopilot(settings, client, [config.symbol], after, through)
    finally:
        client.close()
    counts = dict(decisions["outcome"].value_counts().iter_rows())
    context.log.info(f"{config.symbol}: {decisions.height} bar(s) decided: {counts}")
    errors = decisions.filter(decisions["outcome"] == "error")
    if errors.height:
        context.log.warning(f"{errors.height} decision(s) failed: {errors['reason'].to_list()[:3]}")


@job(description="The paper-trading autopilot over one symbol's new silver bars (the paper_autopilot sensor).")
def autopilot_job() -> None:
    autopilot_op()


def autopilot_requests(context, settings: Settings) -> SensorResult | SkipReason:
    """One autopilot run per symbol with silver bars newer than the newest bar the autopilot has decided (its
    decision log; the cursor is that, as of the last tick). Not the bar last requested: a run that failed would
    lose its bars, while the next request starts after what was really decided. A symbol seen for the first time
    starts at its newest bar: the autopilot trades from now on, not the lake's history. The run key (symbol,
    newest bar) keeps a request repeated while its run is under way from starting a second run; the symbol tag
    is the one the cluster's per-symbol concurrency limit counts, so two runs of a symbol never overlap."""
    from itff_platform.trading.autopilot import DecisionLog, newest_bar

    seen = json.loads(context.cursor) if context.cursor else {}
    log = DecisionLog(settings).read()
    decided = dict(log.group_by("symbol").agg(pl.col("bar_time").max()).iter_rows())
    requests, handled = [], {}
    for symbol in settings.symbols:
        last = decided.get(symbol)
        handled[symbol] = last.isoformat() if last is not None else seen.get(symbol)
        newest = newest_bar(settings, symbol)
        if newest is None or handled[symbol] == newest.isoformat():
            continue
        after = handled[symbol] if symbol in seen else None
        requests.append(
            RunRequest(
                run_key=f"autopilot-{symbol}-{newest.isoformat()}",
                run_config={
                    "ops": {
                        "autopilot_op": {"config": {"symbol": symbol, "after": after, "through": newest.isoformat()}}
                    }
                },
                tags={TRIGGER: "autopilot", SYMBOL_TAG: symbol},
            )
        )
    if not requests:
        return SkipReason("no silver bar newer than the last one the autopilot handled")
    return SensorResult(run_requests=requests, cursor=json.dumps(handled, sort_keys=True))


@asset(
    group_name="trading",
    kinds={"delta"},
    owners=OWNERS,
    deps=["silver_features"],
    description="The paper account's performance (runbook 004): equity curve, profit factor, drawdown, Sharpe and "
    "hit rate beside the backtest of the consensus's signals on the same bars, slippage in bps, confidence "
    "calibration against the realised win rate, error rate and latency, and the acceptance for going live. "
    "Reads the ledger and the autopilot's decisions; empty until the autopilot has decided on a bar.",
)
def paper_performance(itff: ItffSettingsResource) -> MaterializeResult:
    from itff_platform.monitoring.plots import embed_png
    from itff_platform.trading.performance import paper_performance as report_of

    settings = itff.settings()
    report = report_of(settings, settings.reports_dir / "paper")
    figures = {f"plot: {name}": MetadataValue.md(embed_png(path, name)) for name, path in report.figures.items()}
    headline = {k: v for k, v in report.headline().items() if isinstance(v, (int, float))}
    return MaterializeResult(
        metadata={
            "report": MetadataValue.md(report.markdown()),
            **{k: float(v) for k, v in headline.items()},
            "reports": MetadataValue.path(str(settings.reports_dir / "paper")),
            **figures,
        }
    )


def trading_automation(settings: Settings, performance_job) -> tuple[list, list]:
    on = settings.automation.enabled

    @sensor(
        job=autopilot_job,
        minimum_interval_seconds=60,
        default_status=DefaultSensorStatus.RUNNING if on else DefaultSensorStatus.STOPPED,
        description="On each symbol's new silver bars: the autopilot asks /consensus (ITFF_SERVICE_URL) and paper-"
        "orders where it allows.",
    )
    def paper_autopilot(context):
        return autopilot_requests(context, settings)

    @schedule(
        job=performance_job,
        cron_schedule="30 0 * * *",
        execution_timezone="UTC",
        default_status=DefaultScheduleStatus.RUNNING if on else DefaultScheduleStatus.STOPPED,
        description="The paper account's daily performance report.",
    )
    def daily_paper_performance(context):
        return RunRequest(run_key=f"paper-{context.scheduled_execution_time:%Y-%m-%d}", tags={TRIGGER: "daily"})

    return [daily_paper_performance], [paper_autopilot]
