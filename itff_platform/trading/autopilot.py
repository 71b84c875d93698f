"""The autopilot (runbook 004): on each new silver bar of a symbol, ask the service's /consensus and, where it
allows a trade, send a paper order to /trade/execute. It is a client of the service over HTTP, as a trading system
would be, so what it measures (errors, latency) is what a client meets.

Every bar asked about becomes one decision in a Delta log beside the ledger: ordered, held (the consensus did not
allow a trade, and why), refused (the desk said no: 409, 412, 422, 423, which are the risk rules working, not
faults) or error (the service did not answer, or answered what no client should get). The performance report
counts them. An order's idempotency key is the symbol, the target and the bar (not the ensemble: a retrain must
not order a bar twice), so running the autopilot over a bar again replays the same order instead of placing a
second one."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from time import perf_counter
from typing import Any, Protocol

import polars as pl
from deltalake import DeltaTable

from itff_platform.features.silver import feature_columns
from itff_platform.settings import Settings
from itff_platform.trading.desk import ledger_folder

TARGET = "direction"  # the target whose consensus trades both ways (level_up has no shorts)
SIDE_OF_SIGNAL = {"long": "buy", "short": "sell"}
NO_CHAMPION_STATUS = 400  # with the registry's reason and a remedy: contracts.champions.ChampionStore.why_missing
REFUSALS = (409, 412, 422, 423)  # the desk's rules saying no: recorded as decisions, not as errors
RATE_LIMITED = 429
RETRIES_WHEN_LIMITED = 3
MAX_RETRY_WAIT_S = 5.0
UTC_TIME = pl.Datetime("us", "UTC")
DECISION_SCHEMA: dict[str, Any] = {
    "symbol": pl.String,
    "bar_time": UTC_TIME,  # the silver bar decided on (its open time)
    "decided_at": UTC_TIME,
    "outcome": pl.String,  # ordered | held | refused | error
    "reason": pl.String,
    "signal": pl.String,
    "prob_long": pl.Float64,
    "confidence": pl.Float64,
    "threshold": pl.Float64,  # the confidence threshold of the answer
    "decision_threshold": pl.Float64,
    "allow": pl.Boolean,
    "model_version": pl.String,  # the ensemble's id
    "regime": pl.String,
    "bar_close": pl.Float64,
    "side": pl.String,
    "idempotency_key": pl.String,
    "http_status": pl.Int64,  # of the last call made (/consensus, or /trade/execute when an order was sent)
    "order_id": pl.String,
    "order_status": pl.String,
    "replayed": pl.Boolean,
    "requested_usd": pl.Float64,
    "filled_usd": pl.Float64,
    "fill_price": pl.Float64,
    "reference_price": pl.Float64,
    "consensus_ms": pl.Float64,
    "order_ms": pl.Float64,
    "latency_ms": pl.Float64,  # both calls together: what the decision took
}


class Client(Protocol):
    def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any], float]: ...


class ServiceClient:
    """The service over HTTP with the platform's token. A 429 is waited out (its Retry-After, briefly) and
    retried: the rate limit is the service protecting itself, not a decision."""

    def __init__(self, url: str, token: str, timeout_s: float = 30.0) -> None:
        import httpx

        self.http = httpx.Client(base_url=url.rstrip("/"), headers={"X-API-Token": token}, timeout=timeout_s)

    def post(self, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any], float]:
        """(status, JSON answer, milliseconds); httpx.HTTPError when the service cannot be reached."""
        started = perf_counter()
        for attempt in range(RETRIES_WHEN_LIMITED + 1):
            response = self.http.post(path, json=body)
            if response.status_code != RATE_LIMITED or attempt == RETRIES_WHEN_LIMITED:
                break
            time.sleep(min(float(response.headers.get("retry-after", 1) or 1), MAX_RETRY_WAIT_S))
        elapsed = (perf_counter() - started) * 1000
        try:
            answer = response.json()
        except ValueError:
            answer = {"error": response.text[:300]}
        return response.status_code, answer if isinstance(answer, dict) else {"answer": answer}, elapsed

    def close(self) -> None:
        self.http.close()


def client_token(settings: Settings) -> str:
    """The token the autopilot sends: the first of ITFF_API_TOKENS, as the service's other clients use."""
    if not settings.serving.api_tokens:
        raise ValueError("ITFF_API_TOKENS: the autopilot needs a token the service accepts; set ITFF_API_TOKENS")
    return settings.serving.api_tokens[0].get_secret_value()


def order_key(symbol: str, bar_time: datetime) -> str:
    """One order per symbol, target and bar, whoever runs the autopilot, however often and whichever ensemble
    decides: after a retrain the same bar must not be ordered again. A changed decision sends another body under
    the same key, which the desk refuses (409) and the decision log records as refused."""
    return f"autopilot-{symbol}-{TARGET}-{bar_time.astimezone(UTC):%Y%m%dT%H%M}"


def why_held(answer: dict[str, Any]) -> str:
    if answer.get("reason"):  # the consensus's own (a no-skill ensemble, say): better than guessing from figures
        return str(answer["reason"])
    if answer.get("tradable") is False:
        return "the champion's rule is not tradable: the consensus serves its probability flat"
    if answer.get("signal") not in SIDE_OF_SIGNAL:
        return (
            f"signal flat: P(long) {answer.get('prob_long', float('nan')):.3f} does not pass the decision "
            f"threshold {answer.get('decision_threshold', float('nan')):.3f}"
        )
    return (
        f"confidence {answer.get('confidence', float('nan')):.3f} is below the threshold "
        f"{answer.get('threshold', float('nan')):.3f}"
    )


class Autopilot:
    def __init__(self, settings: Settings, client: Client, order_usd: float | None = None) -> None:
        self.settings, self.client = settings, client
        self.order_usd = order_usd or settings.trading.autopilot_order_usd
        self.features = feature_columns(settings)

    def decide(self, symbol: str, bar: dict[str, Any]) -> dict[str, Any]:
        """One silver bar (a row with timestamp, close and the features): ask, maybe order, and say what happened."""
        at: datetime = bar["timestamp"]
        decision = {
            **dict.fromkeys(DECISION_SCHEMA),
            "symbol": symbol,
            "bar_time": at,
            "bar_close": bar.get("close"),
        }
        features = {name: bar.get(name) for name in self.features}
        if any(value is None or not math.isfinite(value) for value in features.values()):
            return self._done(decision, "held", "the bar's features are incomplete in silver (warm-up or a gap)")
        body = {"symbol": symbol, "target": TARGET, "features": features, "bar_time": at.isoformat()}
        try:
            status, answer, decision["consensus_ms"] = self.client.post("/consensus", body)
        except Exception as error:  # unreachable, timed out: runbook 004's "model service down"
            return self._done(decision, "error", f"/consensus unreachable: {type(error).__name__}: {error}"[:300])
        decision["http_status"] = status
        if status == NO_CHAMPION_STATUS and answer.get("remedy"):
            # Promotion declined to serve this symbol x target (no significant edge): a decision not to trade.
            return self._done(decision, "held", f"no champion: {answer.get('reason')}"[:300])
        if status != 200:
            return self._done(decision, "error", f"/consensus answered {status}: {answer.get('error', answer)}"[:300])
        decision.update({name: answer.get(name) for name in ("signal", "prob_long", "confidence", "threshold")})
        decision.update(
            decision_threshold=answer.get("decision_threshold"),
            allow=bool(answer.get("allow")),
            model_version=answer.get("model_version"),
            regime=answer.get("regime"),
        )
        if not decision["allow"]:
            return self._done(decision, "held", why_held(answer))
        return self._order(decision, answer)

    def _order(self, decision: dict[str, Any], answer: dict[str, Any]) -> dict[str, Any]:
        symbol, at = decision["symbol"], decision["bar_time"]
        side = SIDE_OF_SIGNAL[answer["signal"]]
        key = order_key(symbol, at)
        decision.update(side=side, idempotency_key=key, requested_usd=self.order_usd)
        body = {
            "symbol": symbol,
            "side": side,
            "qtyUsd": self.order_usd,
            "confidence": answer["confidence"],
            "idempotencyKey": key,
            "barTime": at.isoformat(),
        }
        try:
            status, reply, decision["order_ms"] = self.client.post("/trade/execute", body)
        except Exception as error:
            return self._done(decision, "error", f"/trade/execute unreachable: {type(error).__name__}: {error}"[:300])
        decision["http_status"] = status
        if status in REFUSALS:
            return self._done(decision, "refused", f"{status}: {reply.get('error', reply)}"[:300])
        if status != 200:
            return self._done(decision, "error", f"/trade/execute answered {status}: {reply.get('error', reply)}"[:300])
        order, fill = reply.get("order") or {}, reply.get("fill") or {}
        decision.update(
            order_id=order.get("id"),
            order_status=order.get("status"),
            replayed=bool(reply.get("replayed")),
            filled_usd=order.get("qtyUsd"),
            fill_price=fill.get("price"),
            reference_price=fill.get("referencePrice"),
        )
        return self._done(decision, "ordered", str(reply.get("message", ""))[:300])

    @staticmethod
    def _done(decision: dict[str, Any], outcome: str, reason: str) -> dict[str, Any]:
        spent = [decision[k] for k in ("consensus_ms", "order_ms") if decision[k] is not None]
        decision.update(
            outcome=outcome,
            reason=reason,
            decided_at=datetime.now(UTC),
            latency_ms=sum(spent) if spent else None,
        )
        return decision

    def run(self, bars: pl.DataFrame) -> pl.DataFrame:
        """Silver bars of any symbols, decided in time order (symbols interleaved, as live): an order's cash
        and drawdown checks see the fills before it."""
        if bars.is_empty():
            return decisions_frame([])
        rows = bars.sort(["timestamp", "symbol"]).iter_rows(named=True)
        return decisions_frame(self.decide(bar["symbol"], bar) for bar in rows)


def decisions_frame(rows: Iterable[dict[str, Any]]) -> pl.DataFrame:
    return pl.DataFrame(list(rows), schema=DECISION_SCHEMA)


class DecisionLog:
    """The autopilot's decisions, a Delta table beside the ledger: appended per run, read by the report."""

    def __init__(self, settings: Settings) -> None:
        self.table: Path = ledger_folder(settings) / "autopilot_decisions"

    def append(self, decisions: pl.DataFrame) -> None:
        if decisions.height:
            self.table.parent.mkdir(parents=True, exist_ok=True)
            decisions.write_delta(str(self.table), mode="append")

    def read(self) -> pl.DataFrame:
        if not DeltaTable.is_deltatable(str(self.table)):
            return pl.DataFrame(schema=DECISION_SCHEMA)
        return pl.read_delta(str(self.table)).select(list(DECISION_SCHEMA))


def silver_bars(
    settings: Settings, symbol: str, after: datetime | None = None, through: datetime | None = None
) -> pl.DataFrame:
    """The silver bars of `symbol` after `after` (exclusive) through `through` (inclusive), oldest first."""
    from datetime import timedelta

    from itff_platform.lake.delta import read_rows
    from itff_platform.lake.layers import LakeTables

    start = after + timedelta(seconds=settings.interval_seconds) if after is not None else None
    end = through + timedelta(seconds=settings.interval_seconds) if through is not None else None
    try:
        rows = read_rows(LakeTables.under(settings).silver, settings.interval, symbol, start, end)
    except FileNotFoundError:
        return pl.DataFrame()
    return rows.sort("timestamp") if rows.height else rows


def run_autopilot(
    settings: Settings,
    client: Client,
    symbols: Sequence[str],
    after: datetime | None,
    through: datetime | None = None,
) -> pl.DataFrame:
    """The autopilot over the symbols' silver bars in (after, through], its decisions logged and returned."""
    frames = [silver_bars(settings, symbol, after, through) for symbol in symbols]
    frames = [frame for frame in frames if frame.height]
    decisions = Autopilot(settings, client).run(pl.concat(frames, how="diagonal") if frames else pl.DataFrame())
    DecisionLog(settings).append(decisions)
    return decisions


def newest_bar(settings: Settings, symbol: str) -> datetime | None:
    """The open time of the symbol's newest silver bar (what the sensor compares with its cursor)."""
    from itff_platform.lake.layers import LakeTables

    table = LakeTables.under(settings).silver
    if not DeltaTable.is_deltatable(str(table)):
        return None
    newest = (
        pl.scan_delta(str(table))
        .filter(pl.col("interval") == settings.interval, pl.col("symbol") == symbol)
        .select(pl.col("timestamp").max())
        .collect()
        .item()
    )
    return newest if isinstance(newest, datetime) else None
