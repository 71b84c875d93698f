"""The BentoML prediction service: champions from the MLflow registry, tagged with the market regime.

    bentoml serve itff_platform.serving.service:ItffService --port 3000

Prediction endpoints need an X-API-Token (ITFF_API_TOKENS); tokens are rate limited; bodies are size limited.
Champions are verified against their SHA-256 manifest at load, and swapped when the alias moves.
Every answered prediction is on disk (write-ahead) before its 200 is sent."""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from time import perf_counter  # a handler parameter is called `time` (the TradingView field)
from typing import Any

import anyio
import bentoml
import numpy as np
import polars as pl

from itff_platform.contracts.answers import OOD_Z, build_answer, log_record, model_age, trading_permission
from itff_platform.contracts.consensus import consensus_fields, ensemble_id, member_weights
from itff_platform.contracts.signals import served_signals
from itff_platform.monitoring.outcomes import read_drift_summary, read_quality_summary
from itff_platform.monitoring.prediction_log import PredictionLog
from itff_platform.rules import REGIMES
from itff_platform.serving import trading_api
from itff_platform.serving.batching import RowBatcher
from itff_platform.serving.candle_windows import features_from_candles, remembered_features
from itff_platform.serving.errors import quiet_client_errors, refusal
from itff_platform.serving.fast_predict import FastPredictRoute
from itff_platform.serving.guard import GuardMiddleware
from itff_platform.serving.online import (
    Candle,
    Number,
    RequestError,
    checked_model_input,
    checked_output,
    checked_regime,
    checked_rows,
    features_from_lake,
    features_from_row,
    model_interval,
    newest_lake_regime,
    parse_bar_time,
    parse_time,
    regime_from_lake,
    tradingview_symbol,
)
from itff_platform.settings import Settings, get_settings
from itff_platform.trading.desk import OrderDesk, OrderRequest

log = logging.getLogger(__name__)
SETTINGS = get_settings()
LAKE_REGIME_CACHE = 4096
PREDICTION_PATHS = r"/predict(_batch)?$"  # what ITFF_SERVING__TRACE_PREDICTIONS=false leaves out of tracing  # bars whose lake regime is remembered

PREDICTIONS = bentoml.metrics.Counter(
    name="itff_predictions_total",
    documentation="Predictions served",
    labelnames=["symbol", "target", "regime", "signal"],
)
LATENCY = bentoml.metrics.Histogram(
    name="itff_prediction_latency_seconds",
    documentation="Model call latency",
    labelnames=["target"],
    # 0.15: runbook 001's p95 SLA is a bucket edge, so the Grafana alert on it is exact, not interpolated.
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 1.0),
)
BATCH_SIZE = bentoml.metrics.Histogram(
    name="itff_predict_batch_size",
    documentation="/predict rows scored per model call (adaptive batching)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
# Gauges that say one thing about the world, set alike by every worker: "mostrecent" exports one series (no pid
# label), the latest write, so a worker that was killed leaves no stale series behind.
REGIME_STATE = bentoml.metrics.Gauge(
    name="market_regime_state",
    documentation="1 for the regime of the lake's newest silver bar per symbol, else 0",
    labelnames=["symbol", "regime"],
    multiprocess_mode="mostrecent",
)
REGIME_BAR = bentoml.metrics.Gauge(
    name="market_regime_bar_timestamp_seconds",
    documentation="Open time of the silver bar market_regime_state reports",
    labelnames=["symbol"],
    multiprocess_mode="mostrecent",
)
QUALITY = bentoml.metrics.Gauge(
    name="prediction_quality_metric",
    documentation="Live quality of the champions, from the last evaluation; "
    'metric="has_data" is 0 until an evaluation has realized outcomes for the model, then 1',
    labelnames=["symbol", "target", "metric"],
    multiprocess_mode="mostrecent",
)
FEATURE_DRIFT = bentoml.metrics.Gauge(
    name="itff_feature_drift",
    documentation="PSI and KS of each feature, training window vs recent data, from the last drift_monitor run",
    labelnames=["symbol", "feature", "statistic"],
    multiprocess_mode="mostrecent",
)
SERVED_VERSION = bentoml.metrics.Gauge(
    name="itff_served_model_version",
    documentation="Registry version being served",
    labelnames=["model"],
    multiprocess_mode="mostrecent",
)


def state_dir(settings: Settings) -> Path:
    folder = settings.serving.state_dir
    return folder if folder.is_absolute() else settings.home / folder


@bentoml.service(
    name="itff-prediction-service",
    traffic={"timeout": 30},
    workers=SETTINGS.serving.workers,
    logging={"access": {"enabled": SETTINGS.serving.access_log}},
    # Matched as regular expressions against the URL: both prediction paths.
    tracing={} if SETTINGS.serving.trace_predictions else {"excluded_urls": [PREDICTION_PATHS]},
)
class ItffService:
    def __init__(self) -> None:
        from itff_platform.contracts.champions import ChampionStore
        from itff_platform.serving.lifeline import exit_with_parent

        exit_with_parent()  # an arbiter killed with SIGKILL must not leave this worker holding the port
        quiet_client_errors()
        self.settings = SETTINGS
        self.store = ChampionStore(self.settings)
        self.batcher = RowBatcher(SETTINGS.serving.batch_max_size, on_batch=BATCH_SIZE.observe)
        self.prediction_log = PredictionLog.for_settings(
            self.settings, write_ahead=self.settings.serving.prediction_log_write_ahead
        )
        self._lake_regimes: dict[tuple[str, datetime], str] = {}
        # ITFF_TEST_PAUSE_AFTER_INTENT_S: tests only, a pause between an order's durable intent and its fill.
        self.desk = OrderDesk(
            self.settings, pause_after_intent_s=float(os.environ.get("ITFF_TEST_PAUSE_AFTER_INTENT_S", 0))
        )
        self.desk.recover()  # what a killed worker left pending is abandoned, never filled
        trading_api.report_quietly(self.desk)
        self._report(self.store.refresh())
        if self.settings.serving.reload_interval_s > 0:
            threading.Thread(target=self._poll, daemon=True, name="champion-poller").start()

    @bentoml.on_shutdown
    def _flush_prediction_log(self) -> None:
        """Whatever is still buffered is written before the worker exits."""
        self.prediction_log.close()

    def __is_ready__(self) -> bool:
        """BentoML's own GET /readyz (the probe Kubernetes uses) asks this."""
        return self.store.ready()

    def _poll(self) -> None:
        while True:
            time.sleep(self.settings.serving.reload_interval_s)
            try:
                self._report(self.store.refresh())
            except Exception:  # the registry being briefly unreachable must not kill the poller
                log.exception("champion refresh failed; serving what is loaded")

    def _report(self, changes: dict[str, str]) -> None:
        for name, change in changes.items():
            log.info("%s: %s", name, change)
        for model in self.store.models.values():
            SERVED_VERSION.labels(model=model.name).set(float(model.version))
        evaluated = set()
        for row in read_quality_summary(self.settings):
            QUALITY.labels(symbol=row["symbol"], target=row["target"], metric=row["metric"]).set(row["value"])
            evaluated.add((row["symbol"], row["target"]))
        for row in read_drift_summary(self.settings):
            FEATURE_DRIFT.labels(symbol=row["symbol"], feature=row["feature"], statistic=row["statistic"]).set(
                row["value"]
            )
        # From the start, every served model has a series, so an alert on "no data for too long" can fire.
        for symbol, target in self.store.keys():  # noqa: SIM118  (a ChampionStore, not a dict)
            QUALITY.labels(symbol=symbol, target=target, metric="has_data").set(float((symbol, target) in evaluated))
        self._report_regimes()

    def _report_regimes(self) -> None:
        """market_regime_state from the lake's newest silver bar: the same in every worker, and no client's
        candles (dated 2099, say) can move it."""
        for symbol in self.settings.symbols:
            try:
                newest = newest_lake_regime(self.settings, symbol)
            except Exception:
                log.exception("market_regime_state: reading %s's newest silver bar failed", symbol)
                continue
            if newest is None:
                continue
            regime, at = newest
            for name in REGIMES:
                REGIME_STATE.labels(symbol=symbol, regime=name).set(1.0 if name == regime else 0.0)
            REGIME_BAR.labels(symbol=symbol).set(at.timestamp())

    @bentoml.api(route="/predict")
    async def predict(
        self,
        symbol: str,
        target: str = "direction",
        features: dict[str, Number] | list[Number] | None = None,
        candles: list[Candle] | None = None,
        regime: str | None = None,
        bar_time: str | None = None,
    ) -> dict:
        """`bar_time` (ISO-8601, the time of the bar a feature row describes) lets the prediction be evaluated
        once its outcome is known, and looks the bar's regime up in the lake. A client's `regime` is used only
        when the lake cannot say, and must be one of the six names."""
        return await self.answer_predict(symbol, target, features, candles, regime, bar_time)

    async def answer_predict(
        self,
        symbol: str,
        target: str = "direction",
        features: dict[str, Number] | list[Number] | None = None,
        candles: list[Candle] | pl.DataFrame | None = None,
        regime: str | None = None,
        bar_time: str | None = None,
    ) -> Any:
        """/predict's response, for BentoML's route and for the fast one (serving/fast_predict.py), which
        passes the candles as a frame already."""
        received = perf_counter()
        try:
            model, x, regime, at = await self._inputs(symbol.upper(), target, features, candles, regime, bar_time)
            return answered(await self._answer(model, x, regime, at, received, "/predict"))
        except RequestError as error:
            return refusal(error, "/predict")

    def _champion(self, symbol: str, target: str):
        if symbol not in self.settings.symbols:
            raise RequestError(f"symbol: {symbol!r:.40} is not served; served symbols are {self.settings.symbols}")
        if target not in self.settings.training.targets:
            raise RequestError(f"target: {target!r:.40} is not one of {self.settings.training.targets}")
        model = self.store.get(symbol, target)
        if model is None:
            message, details = self.store.why_missing(symbol, target)
            raise RequestError(message, **details)
        return model

    async def _inputs(self, symbol, target, features, candles, regime, bar_time):
        """(model, rows, regime, bar time)."""
        if (features is None) == (candles is None):
            raise RequestError("features/candles: send exactly one of them")
        claimed = checked_regime(regime)
        model = self._champion(symbol, target)
        if candles is not None:
            if bar_time is not None:
                raise RequestError("bar_time: only with features; with candles the bar time is the last candle's")
            x, regime, at = await self._candle_features(model, candles)
        else:
            x = features_from_row(features, model.meta["features"])
            at = parse_bar_time(bar_time, self.settings) if bar_time is not None else None
            regime = await self._row_regime(symbol, at, claimed)
        checked_model_input(model, x, "candles" if candles is not None else "features")
        return model, x, regime, at

    async def _row_regime(self, symbol: str, at, claimed: str | None) -> str:
        """A feature row's regime: the lake's for that bar when it holds it, else the client's (validated), else unknown."""
        if at is None:
            return claimed or "unknown"
        found = self._lake_regimes.get((symbol, at))
        if found is None:
            # ~10 ms of Delta scan, off the event loop. A bar's regime reads only past bars, so once the lake
            # has it, it is final: kept, since clients ask about the newest bar over and over.
            found = await anyio.to_thread.run_sync(regime_from_lake, self.settings, symbol, at)
            if found is not None:
                self._lake_regimes[(symbol, at)] = found
                if len(self._lake_regimes) > LAKE_REGIME_CACHE:
                    self._lake_regimes.pop(next(iter(self._lake_regimes)))  # the oldest entry
        return found if found is not None else (claimed or "unknown")

    async def _candle_features(self, model, candles):
        arguments = (
            self.settings,
            model.forecaster.context_rows + 1,
            model.meta["features"],
            model_interval(model, self.settings),
        )
        if isinstance(candles, pl.DataFrame):  # the fast route's frame: a window seen before is answered here
            known = remembered_features(candles, *arguments)
            if known is not None:
                return known
        # Indicator computation takes milliseconds: off the event loop, so feature-row requests keep flowing.
        return await anyio.to_thread.run_sync(features_from_candles, candles, *arguments)

    async def _answer(self, model, x, regime, bar_time, received: float, endpoint: str) -> dict:
        started = perf_counter()
        out, spread = await self.batcher.predict(model, x)
        LATENCY.labels(target=model.target).observe(perf_counter() - started)
        checked_output(out, "features")
        answer = build_answer(
            model, x, out, spread, regime, bar_time, max_age_days=self.settings.serving.model_max_age_days
        )
        answer["request_id"] = request_id = uuid.uuid4().hex
        PREDICTIONS.labels(
            symbol=model.symbol, target=model.target, regime=answer["regime"], signal=answer["signal"]
        ).inc()
        # On disk before the 200: a crash after this cannot lose the prediction the client was told about.
        await self.prediction_log.append_durable(
            log_record(answer, x, request_id, endpoint, (perf_counter() - received) * 1000)
        )
        return answer

    @bentoml.api(route="/predict_batch")
    def predict_batch(self, symbol: str, rows: list[list[Number]], target: str = "direction") -> dict:
        """Many feature rows (in the model's order) in one call: probabilities (or bands) and signals as arrays."""
        try:
            model = self._champion(symbol.upper(), target)
            names = model.meta["features"]
            wrong = [i for i, row in enumerate(rows) if len(row) != len(names)]
            if wrong:
                raise RequestError(
                    f"rows: each row must hold {len(names)} values, in order {names}; rows {wrong[:5]} do not"
                )
            x = np.asarray(rows, dtype=np.float64) if rows else np.empty((0, len(names)))
            checked_rows(x, "rows", names)
            checked_model_input(model, x, "rows")
            # The deterministic output, as /predict serves it; no MC-dropout passes, since a batch reports no uncertainty.
            out = model.forecaster.predict_proba(x) if len(x) else np.empty(0)
            checked_output(out, "rows")
        except RequestError as error:
            return refusal(error, "/predict_batch")  # type: ignore[return-value]
        ood = [False] * len(x)
        if len(x) and model.forecaster.scaler is not None:
            ood = (np.abs(model.forecaster.scale(x)).max(axis=1) > OOD_Z).tolist()
        about = {
            "model_version": model.version,
            "family": model.family,
            **trading_permission(model.meta),
            **model_age(model.meta, datetime.now(UTC), self.settings.serving.model_max_age_days),
            "out_of_distribution": ood,
        }
        if model.meta["task"] == "regression":
            return {**about, "bands": np.asarray(out).tolist()}
        signal, _ = served_signals(out, float(model.meta["threshold"]), target, about["tradable"])
        return {
            **about,
            "threshold": float(model.meta["threshold"]),
            "prob_up": np.round(out, 6).tolist(),
            "signal": signal.tolist(),
        }

    @bentoml.api(route="/tradingview")
    async def tradingview(
        self,
        ticker: str,
        close: Number,
        time: str,
        target: str = "direction",
        candles: list[Candle] | None = None,
        sent_at: str | Number | None = None,
        nonce: str | None = None,
    ) -> dict:
        """A TradingView alert webhook: {"ticker": "{{ticker}}", "close": {{close}}, "time": "{{time}}"}.
        With ITFF_TRADINGVIEW_SECRET set, the raw body must be signed (X-Signature) and carry `sent_at`; `nonce`
        lets two otherwise identical alerts differ (the guard checks all three before this runs)."""
        received = perf_counter()
        try:
            if not math.isfinite(close) or close <= 0:
                raise RequestError(f"close: {close!r} must be a finite price > 0")
            symbol = tradingview_symbol(ticker)
            model = self._champion(symbol, target)
            at = parse_time(time, "time")
            bar = timedelta(seconds=self.settings.interval_seconds)
            if at > datetime.now(UTC) + bar:
                raise RequestError(
                    f"time: {at.isoformat()} is in the future; an alert's bar opens at most one "
                    f"{self.settings.interval} bar after now"
                )
            age = 0
            if candles is not None:
                x, regime, bar_time = await self._candle_features(model, candles)
                bar_close = candles[-1].close
                if not bar_time <= at < bar_time + bar:
                    raise RequestError(
                        f"time: {at.isoformat()} is not in the last candle's bar ({bar_time.isoformat()})"
                    )
            else:
                found = await anyio.to_thread.run_sync(features_from_lake, self.settings, symbol, at)
                x, regime, bar_time, bar_close, age = found.x, found.regime, found.bar_time, found.close, found.age_bars
                if age and self.settings.serving.tradingview_stale == "refuse":
                    raise RequestError(
                        f"time: the lake's newest {symbol} bar ({bar_time:%Y-%m-%d %H:%M}) is {age} bar(s) "
                        f"older than the alert's; it is not answered from an older bar "
                        "(ITFF_TRADINGVIEW_STALE=refuse): send candles, or wait for the lake"
                    )
            deviation = abs(close - bar_close) / bar_close
            if deviation > self.settings.serving.tradingview_max_close_deviation:
                raise RequestError(
                    f"close: {close:g} is {deviation:.2%} from the {symbol} bar's close {bar_close:g} at "
                    f"{bar_time:%Y-%m-%d %H:%M}; at most {self.settings.serving.tradingview_max_close_deviation:.2%} "
                    "is accepted (another market's price, or the wrong bar)"
                )
            checked_model_input(model, x, "candles" if candles is not None else "time")
            answer = await self._answer(model, x, regime, bar_time, received, "/tradingview")
        except RequestError as error:
            return refusal(error, "/tradingview")  # type: ignore[return-value]
        answer.update(
            {"ticker": ticker, "alert_close": close, "bar_close": bar_close, "stale": age > 0, "age_bars": age}
        )
        return answer

    @bentoml.api(route="/consensus")
    async def consensus(
        self,
        symbol: str,
        target: str = "direction",
        features: dict[str, Number] | list[Number] | None = None,
        candles: list[Candle] | None = None,
        bar_time: str | None = None,
    ) -> dict:
        """Every family's latest registered version that passed validation votes (contracts.consensus); the vote
        is their mean P(up), each weighted by its walk-forward skill over the baselines, so a family without
        skill does not count. Whether to trade is the champion's call: the signal is flat when the champion's
        rule is not tradable. model_age_days and expired are the oldest voter's. Logged like /predict's answers,
        under the ensemble's id."""
        received = perf_counter()
        try:
            answer, x = await anyio.to_thread.run_sync(
                self._consensus, symbol.upper(), target, features, candles, bar_time
            )
        except RequestError as error:
            return refusal(error, "/consensus")  # type: ignore[return-value]
        answer["request_id"] = request_id = uuid.uuid4().hex
        # The log's threshold is the rule's (what a long call means to live evaluation), not the confidence gate.
        record = log_record({**answer, "threshold": answer["decision_threshold"]}, x, request_id, "/consensus", None)
        record["latency_ms"] = (perf_counter() - received) * 1000
        await self.prediction_log.append_durable(record)
        return answer

    def _consensus(self, symbol, target, features, candles, bar_time) -> tuple[dict, np.ndarray]:
        """(the answer, the feature row its log record hashes: the first voter's)."""
        champion = self._champion(symbol, target)  # same validation as /predict
        if (features is None) == (candles is None):
            raise RequestError("features/candles: send exactly one of them")
        if target == "forward_return":
            raise RequestError("target: consensus votes on probabilities; forward_return has bands, not votes")
        if candles is not None and bar_time is not None:
            raise RequestError("bar_time: only with features; with candles the bar time is the last candle's")
        at = parse_bar_time(bar_time, self.settings) if bar_time is not None else None
        members, skipped = self.store.family_models(symbol, target)
        breakdown, regime, rows = [], None, []
        for model, standing in members:
            if candles is not None:
                x, regime, at = features_from_candles(
                    candles,
                    self.settings,
                    model.forecaster.context_rows + 1,
                    model.meta["features"],
                    model_interval(model, self.settings),
                )
            else:
                assert features is not None  # exactly one of features and candles, checked above
                x = features_from_row(features, model.meta["features"])
            checked_model_input(model, x, "candles" if candles is not None else "features")
            breakdown.append(self._vote(model, x, at) | {"skill": standing.skill, "skill_baseline": standing.baseline})
            rows.append(x)
        if regime is None and at is not None:
            regime = regime_from_lake(self.settings, symbol, at)
        for member, weight in zip(breakdown, member_weights([b["skill"] for b in breakdown]), strict=True):
            member["weight"] = weight
        voting = [b for b in breakdown if b["weight"] > 0]
        permission = trading_permission(champion.meta)
        vote = consensus_fields(
            [b["prob_up"] for b in breakdown],
            [b["weight"] for b in breakdown],
            # The rule of the voters that count; with none, the rule a model starts from.
            decision_threshold=float(np.median([b["threshold"] for b in voting]))
            if voting
            else self.settings.trading.default_threshold,
            confidence_threshold=self.settings.trading.confidence_threshold,
            target=target,
            tradable=permission["tradable"],
        )
        ages = [b["model_age_days"] for b in breakdown if b["model_age_days"] is not None]
        answer = {
            "symbol": symbol,
            "target": target,
            **vote,
            "model_version": ensemble_id([(b["family"], str(b["model_version"]), b["weight"]) for b in breakdown]),
            "family": "ensemble",
            "regime": regime if regime in REGIMES else "unknown",
            "bar_time": at.isoformat() if at is not None else None,
            **permission,
            "model_age_days": max(ages) if ages else None,
            "expired": any(b["expired"] for b in breakdown),
            "families": breakdown,
            "skipped_families": skipped,
            "served_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
        }
        return answer, rows[0] if rows else np.empty((1, 0))

    def _vote(self, model, x, at) -> dict:
        # The deterministic probability, as /predict serves it; no MC dropout, whose spread a vote does not use.
        out = model.forecaster.predict_proba(x)
        checked_output(out, "features")
        return {
            "family": model.family,
            "model_version": model.version,
            "prob_up": float(out[-1]),
            "threshold": float(model.meta["threshold"]),
            **trading_permission(model.meta),
            **model_age(model.meta, at or datetime.now(UTC), self.settings.serving.model_max_age_days),
        }

    @bentoml.api(route="/trade/execute")
    async def trade_execute(
        self,
        symbol: str,
        side: str,
        qtyUsd: Number,  # runbook 004 names the fields in camelCase
        confidence: Number,
        idempotencyKey: str | None = None,
        price: Number | None = None,
        barTime: str | None = None,
        mode: str | None = None,
    ) -> dict:
        """A paper order (runbook 004), gated on confidence and drawdown, sized, capped, filled once per key."""
        request = OrderRequest(symbol.upper(), side, qtyUsd, confidence, idempotencyKey, price, barTime, mode)
        return await trading_api.execute(self.desk, request)  # type: ignore[return-value]

    @bentoml.api(route="/risk/reset")
    async def risk_reset(self, reason: str | None = None) -> dict:
        """Unlock orders after a drawdown lock (admin token): the drawdown is measured from now on."""
        return await trading_api.reset(self.desk, reason)

    # No /healthz or /readyz APIs: a BentoML API is a POST, beside BentoML's own GET /healthz, /livez and /readyz.
    # GET /readyz with a token lists the models (the guard answers it from readiness()).
    def readiness(self) -> tuple[bool, dict]:
        """(ready, every model's state; a model without a champion says why and what to do)."""
        ready = self.store.ready()
        return ready, {"ready": ready, "models": self.store.report(), "risk": self._risk()}

    def _risk(self) -> dict | None:
        try:
            return self.desk.risk()
        except Exception:  # an unreadable lake must not take readiness down with it
            log.exception("risk: the paper account could not be valued")
            return None

    @bentoml.api(route="/admin/reload")
    def reload(self) -> dict:
        changes = self.store.refresh()
        self._report(changes)
        return {"changes": changes, "models": self.store.report()}


def answered(answer: dict):
    """The 200 as a response, encoded here. BentoML passes a Response through; for a dict, its output path
    built a TypeAdapter and the JSON schema of `dict` on every request (about 12 % of a worker's time on
    /predict). Compact JSON, as BentoML writes it; a value JSON cannot hold (NaN) goes BentoML's way."""
    from starlette.responses import Response

    try:
        body = json.dumps(answer, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return answer
    return Response(body, media_type="application/json")


async def readiness_details() -> tuple[bool, dict]:
    # Off the event loop: a model without a champion imports the promotion module for its remedy, once.
    return await anyio.to_thread.run_sync(bentoml.get_current_service().readiness)


async def portfolio() -> dict:
    desk = bentoml.get_current_service().desk
    answer = await anyio.to_thread.run_sync(desk.portfolio)
    trading_api.report(answer, desk.settings.symbols)
    return answer


async def answer_predict(**arguments: Any) -> Any:
    return await bentoml.get_current_service().answer_predict(**arguments)


async def openapi_document() -> dict:
    return await anyio.to_thread.run_sync(_openapi_document)


@functools.cache
def _openapi_document() -> dict:
    """BentoML's document plus what it cannot express: the token scheme, examples, enums, typed answers."""
    from itff_platform.serving.openapi import documented

    return documented(_SERVICE.openapi_spec.asdict(), SETTINGS)


# bentoml.service is imported lazily, so mypy sees the plain class it decorates; this is the bentoml Service.
_SERVICE: Any = ItffService
_SERVICE.add_asgi_middleware(
    GuardMiddleware,
    tokens=[token.get_secret_value() for token in SETTINGS.serving.api_tokens],
    admin_token=SETTINGS.serving.admin_token.get_secret_value() if SETTINGS.serving.admin_token else None,
    per_minute=SETTINGS.serving.rate_limit_per_minute,
    burst=SETTINGS.serving.rate_limit_burst,
    workers=SETTINGS.serving.workers,
    max_bytes=SETTINGS.serving.max_request_bytes,
    auth_failures_per_minute=SETTINGS.serving.auth_failures_per_minute,
    auth_failure_burst=SETTINGS.serving.auth_failure_burst,
    tradingview_secret=SETTINGS.serving.tradingview_secret.get_secret_value()
    if SETTINGS.serving.tradingview_secret
    else None,
    tradingview_window_s=SETTINGS.serving.tradingview_window_s,
    seen_signatures=state_dir(SETTINGS) / "tradingview-signatures",
    readiness=readiness_details,
    openapi=openapi_document,
)
_SERVICE.add_asgi_middleware(trading_api.PortfolioRoute, portfolio=portfolio)  # inside the guard
_SERVICE.add_asgi_middleware(FastPredictRoute, handler=answer_predict)  # inside the guard too
