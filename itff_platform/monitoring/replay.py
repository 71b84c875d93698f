"""`itff replay START END`: step through history one day at a time with the daily refresh's logic.

Each day D, as if it were 00:00 UTC on D+1:
1. ingest: every symbol's month partition is re-ingested with the candles known by then (nothing later);
2. features: bronze and silver are updated incrementally (silver from the bars whose labels just became known);
3. predictions: the current champions predict every bar of D, through the service's own answer code, into the
   replay's prediction log (served_at = when the bar closed);
4. outcomes, drift and a keep/retrain decision per champion, recorded in the replay's decisions table; reports weekly.
   The table is the cooldown's history, so earlier days' retrain decisions hold back later ones; a replay first
   drops the decisions an earlier replay made from START on, since it decides those days again.
After the last day, END's month is given back the rest of its candles, so the lake has no hole after the replay.
Replay keeps its log, decisions and reports under monitoring/replay and reports/replay, apart from live ones.

Predictions only ever see the silver row of their bar, whose features use past bars only, so the lake holding
later months (from an earlier full build) cannot leak into them."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from itff_platform.settings import Settings

if TYPE_CHECKING:
    from itff_platform.contracts.champions import LoadedModel
    from itff_platform.market.candles import CandleSource


class KnownBy:
    """A candle source that returns nothing at or after `cutoff`: the market as it was known then."""

    def __init__(self, source: CandleSource, cutoff: datetime) -> None:
        self.source, self.cutoff, self.name = source, cutoff, source.name

    def fetch(self, symbol: str, interval: str, start: datetime, end: datetime) -> pl.DataFrame:
        known: pl.DataFrame = self.source.fetch(symbol, interval, start, min(end, self.cutoff))
        return known


@dataclass
class ReplaySummary:
    days: int = 0
    predictions: int = 0
    silver_rows_written: int = 0
    decisions: list[pl.DataFrame] = field(default_factory=list)
    last_evaluation: object = None

    def decision_table(self) -> pl.DataFrame:
        return pl.concat(self.decisions) if self.decisions else pl.DataFrame()


def replay_settings(settings: Settings) -> Settings:
    """Replay logs, decides and reports into its own folders: its (possibly in-sample) answers must never mix
    with the live prediction log, the decisions the drift sensor acts on, or the service's quality gauge."""
    if settings.monitoring.root.name == "replay":
        return settings
    return settings.model_copy(
        update={"monitoring_dir": settings.monitoring.root / "replay", "reports_dir": settings.reports_dir / "replay"}
    )


def day_range(start: date, end: date) -> list[date]:
    if end < start:
        raise ValueError(f"END: {end} is before START {start}")
    return [start + timedelta(days=i) for i in range((end - start).days + 1)]


def replay(
    settings: Settings, start: date, end: date, progress: Callable[[str], None] = print, report_every_days: int = 7
) -> ReplaySummary:
    from itff_platform.contracts.champions import ChampionStore
    from itff_platform.market import candle_source
    from itff_platform.monitoring.evaluation import evaluate, forget_decisions_from, record_decisions
    from itff_platform.monitoring.prediction_log import PredictionLog

    settings = replay_settings(settings)
    store = ChampionStore(settings)
    store.refresh()
    if not store.models:
        raise LookupError("replay: no champion in the registry to predict with; run `itff run` (or `make run`) first")
    for model in store.models.values():
        trained = model.meta.get("trained_through")
        if trained and trained[:10] >= start.isoformat():
            progress(
                f"note: {model.name} v{model.version} was trained on data through {trained[:10]}, after {start}: "
                "its live figures in this replay are in-sample (train with ITFF_END_DATE before START for honest ones)"
            )
    forgotten = forget_decisions_from(settings, datetime(start.year, start.month, start.day, tzinfo=UTC))
    if forgotten:
        progress(f"note: {forgotten} decision(s) of an earlier replay from {start} on are replaced by this one's")
    log = PredictionLog.for_settings(settings)
    source, summary = candle_source(settings), ReplaySummary()
    days = day_range(start, end)
    try:
        for i, day in enumerate(days):
            cutoff = datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)
            summary.silver_rows_written += update_lake(settings, KnownBy(source, cutoff), day)
            for model in store.models.values():
                for record in predict_day(settings, model, day):
                    log.append(record)
                    summary.predictions += 1
            log.flush()
            with_reports = (i + 1) % report_every_days == 0 or day == end
            evaluation = evaluate(settings, cutoff, settings.reports_dir / day.isoformat(), with_plots=with_reports)
            record_decisions(settings, evaluation.decisions)
            summary.decisions.append(evaluation.decisions)
            summary.last_evaluation, summary.days = evaluation, summary.days + 1
            retrain = ", ".join(f"{s} {t}" for s, t in evaluation.retrain()) or "none"
            progress(
                f"{day}: {summary.predictions} predictions logged, {evaluation.realized.height} realized, "
                f"{evaluation.pending} pending; retrain: {retrain}"
            )
    finally:
        log.close()
    # The lake gave each day only what was known by then; give the last month back the rest the source holds,
    # so nothing trained or served afterwards sees a hole after END.
    summary.silver_rows_written += restore_month(settings, source, end)
    return summary


def update_lake(settings: Settings, source: KnownBy, day: date) -> int:
    """The daily refresh for one day: raw and bronze for the day's month, silver from the first bar whose
    row changed (the last `label_horizon` bars of the day before had their labels still unknown)."""
    from itff_platform.lake.layers import build_bronze, build_silver, ingest_raw, month_start

    month = month_start(day)
    since = datetime(day.year, day.month, day.day, tzinfo=UTC) - timedelta(
        seconds=settings.features.label_horizon * settings.interval_seconds
    )
    written = 0
    for symbol in settings.symbols:
        ingest_raw(source, settings, symbol, [month])
        build_bronze(settings, symbol, [month])
        if since < month:  # the first of a month: yesterday's labels live in last month's partition
            previous = month_start(since.date())
            build_bronze(settings, symbol, [previous])
            written += build_silver(settings, symbol, [previous, month]).height
        else:
            written += build_silver(settings, symbol, [month], since=since).height
    return written


def restore_month(settings: Settings, source: CandleSource, day: date) -> int:
    from itff_platform.lake.layers import build_bronze, build_silver, ingest_raw, month_start

    month = month_start(day)
    for symbol in settings.symbols:
        ingest_raw(source, settings, symbol, [month])
        build_bronze(settings, symbol, [month])
    return sum(build_silver(settings, symbol, [month]).height for symbol in settings.symbols)


def predict_day(settings: Settings, model: LoadedModel, day: date) -> list[dict[str, Any]]:
    """The champion's answers for every bar of `day`, as the service would have given them when each bar closed."""
    from itff_platform.contracts.answers import build_answer, log_record
    from itff_platform.lake.delta import read_rows
    from itff_platform.lake.layers import LakeTables

    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    context = timedelta(seconds=settings.interval_seconds * model.forecaster.context_rows)
    rows = read_rows(
        LakeTables.under(settings).silver, settings.interval, model.symbol, start - context, start + timedelta(days=1)
    )
    names = model.meta["features"]
    rows = rows.drop_nulls(names)
    if rows.filter(pl.col("timestamp") >= start).is_empty():
        return []
    x = rows.select(names).to_numpy().astype(np.float64)
    started = datetime.now()
    out, spread = model.predict(
        x
    )  # what the service serves: the deterministic probability, MC dropout as uncertainty only
    per_row_ms = (datetime.now() - started).total_seconds() * 1000 / len(x)
    bar = timedelta(seconds=settings.interval_seconds)
    records = []
    for i, (stamp, regime) in enumerate(zip(rows["timestamp"], rows["regime"], strict=True)):
        if stamp < start:
            continue  # context for the sequence models, not a bar of this day
        answer = build_answer(
            model,
            x[: i + 1],
            out[: i + 1],
            None if spread is None else spread[: i + 1],
            regime,
            stamp,
            max_age_days=settings.serving.model_max_age_days,
            served_at=stamp + bar,
        )
        records.append(log_record(answer, x[: i + 1], uuid.uuid4().hex, "replay", per_row_ms))
    return records
