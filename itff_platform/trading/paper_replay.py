"""`itff replay --trade`: the autopilot driven over a past period against a real `bentoml serve`, so runbook 004's
30-day paper validation can be produced from the lake in minutes instead of waited for.

Day by day, every silver bar of the period is put to /consensus and, where it allows, ordered on /trade/execute
with the bar as barTime: the desk fills it at the next bar's open from the lake, as it would have live. Silver
features read past bars only, so the full lake cannot leak the future into a decision; the champions may have been
trained on the period, though (then the figures are in-sample, and the command says so).

The replay's service gets an account of its own (a fresh ledger under the replay's monitoring folder), so it
never mixes with the live paper account; given a URL instead, it trades on that service's account."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from itff_platform.local_http import answers, free_port
from itff_platform.settings import Settings
from itff_platform.trading.autopilot import TARGET, ServiceClient, client_token, run_autopilot, silver_bars
from itff_platform.trading.desk import ledger_folder
from itff_platform.trading.performance import PaperReport, paper_performance

if TYPE_CHECKING:
    from itff_platform.contracts.champions import LoadedModel

READY_TIMEOUT_S = 180
CODE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding itff_platform/, whose copy `bentoml serve` loads


@dataclass
class PaperReplay:
    start: datetime
    end: datetime
    decisions: pl.DataFrame
    report: PaperReport
    folder: Path


def paper_settings(settings: Settings) -> Settings:
    """The replay's account: a ledger and decision log of its own, reports under reports/replay."""
    from itff_platform.monitoring.replay import replay_settings

    replayed = replay_settings(settings)
    return replayed.model_copy(update={"ledger_dir": replayed.monitoring.root / "trading"})


def replay_period(settings: Settings, days: int, end: datetime | None = None) -> tuple[datetime, datetime]:
    """The last `days` days of bars every symbol has in silver (or before `end`): (first bar, last bar)."""
    newest = []
    for symbol in settings.symbols:
        bars = silver_bars(settings, symbol, through=end)
        if bars.is_empty():
            raise LookupError(f"replay --trade: silver holds no {symbol} bar: run `itff run` (or `make run`) first")
        newest.append(bars["timestamp"].max())
    last: datetime = min(newest)  # type: ignore[assignment,type-var]
    return last - timedelta(days=days) + timedelta(seconds=settings.interval_seconds), last


@contextmanager
def local_service(settings: Settings, token: str, env: Mapping[str, str] | None = None) -> Iterator[str]:
    """`bentoml serve` on a free loopback port over the project's registry and lake, with the replay's ledger,
    prediction log and token and no rate limit (the replay sends a month of bars in minutes); yields its URL, stops it after."""

    port = free_port()
    state = settings.home / ".bentoml" / "paper-replay" / str(port)
    state.mkdir(parents=True, exist_ok=True)
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
        "ITFF_HOME": str(settings.home),
        # The replay's folders, each named: the child reads its settings from the environment, and without
        # them /consensus would log replayed answers into the live prediction log under ITFF_HOME.
        "ITFF_LEDGER_DIR": str(ledger_folder(settings)),
        "ITFF_MONITORING_DIR": str(settings.monitoring.root),
        "ITFF_LAKE_DIR": str(settings.lake.root),
        "ITFF_MLFLOW_DIR": str(settings.tracking.mlflow_dir),
        "ITFF_API_TOKENS": f'["{token}"]',
        "ITFF_RATE_LIMIT_PER_MINUTE": "100000000",
        "ITFF_RATE_LIMIT_BURST": "100000",
        "ITFF_RELOAD_INTERVAL_S": "0",
        "BENTOML_HOME": str(state),
        **(env or {}),
    }
    command = [str(Path(sys.executable).parent / "bentoml"), "serve", "itff_platform.serving.service:ItffService"]
    with open(state / "serve.log", "w") as log:
        process = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", str(port)],
            cwd=CODE_ROOT,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            if not answers(f"{url}/readyz", process, READY_TIMEOUT_S):
                raise RuntimeError(f"bentoml serve did not become ready; its log: {state / 'serve.log'}")
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def paper_replay(
    settings: Settings,
    days: int,
    end: datetime | None = None,
    url: str | None = None,
    env: Mapping[str, str] | None = None,
    progress: Callable[[str], None] = print,
) -> PaperReplay:
    """The autopilot over the last `days` days (before `end`) against a service it starts (or the one at `url`),
    then the paper_performance report of the period, written into reports/replay/paper-START-END."""
    if url is None:
        settings = paper_settings(settings)
    else:  # that service's account, read where this project keeps it (ITFF_LEDGER_DIR, else <lake>/trading)
        from itff_platform.monitoring.replay import replay_settings

        settings = replay_settings(settings)
    start, last = replay_period(settings, days, end)
    _note_in_sample(settings, start, progress)
    if url is None:
        shutil.rmtree(ledger_folder(settings), ignore_errors=True)  # each replay is a fresh account
        token = secrets.token_urlsafe(16)
        with local_service(settings, token, env) as started:
            progress(f"bentoml serve started at {started} (ledger {ledger_folder(settings)})")
            decisions = _drive(settings, ServiceClient(started, token), start, last, progress)
    else:
        decisions = _drive(settings, ServiceClient(url, client_token(settings)), start, last, progress)
    folder = settings.reports_dir / f"paper-{start:%Y-%m-%d}-{last:%Y-%m-%d}"
    report = paper_performance(settings, folder, start, last)
    return PaperReplay(start, last, decisions, report, folder)


def _drive(
    settings: Settings, client: ServiceClient, start: datetime, last: datetime, progress: Callable[[str], None]
) -> pl.DataFrame:
    bar, frames = timedelta(seconds=settings.interval_seconds), []
    day = start
    try:
        while day <= last:
            through = min(day + timedelta(days=1) - bar, last)
            decided = run_autopilot(settings, client, settings.symbols, after=day - bar, through=through)
            frames.append(decided)
            counts = dict(decided["outcome"].value_counts().iter_rows())
            progress(
                f"{day:%Y-%m-%d}: {decided.height} bars decided: {counts.get('ordered', 0)} ordered, "
                f"{counts.get('held', 0)} held, {counts.get('refused', 0)} refused, {counts.get('error', 0)} errors"
            )
            day = through + bar
    finally:
        client.close()
    return pl.concat(frames) if frames else pl.DataFrame()


def _note_in_sample(settings: Settings, start: datetime, progress: Callable[[str], None]) -> None:
    from itff_platform.contracts.champions import ChampionStore

    store = ChampionStore(settings)
    store.refresh()
    for symbol in settings.symbols:  # every validated family votes, not only the champions
        for model, _ in store.family_models(symbol, TARGET)[0]:
            _note_if_trained_on(model, start, progress)


def _note_if_trained_on(model: LoadedModel, start: datetime, progress: Callable[[str], None]) -> None:
    trained = model.meta.get("trained_through")
    if trained and trained[:10] >= start.date().isoformat():
        progress(
            f"note: {model.name} v{model.version} was trained on data through {trained[:10]}, after {start:%Y-%m-%d}:"
            " this replay's figures are in-sample (train with ITFF_END_DATE before the period for honest ones)"
        )
