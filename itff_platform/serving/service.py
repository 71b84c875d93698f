"""The BentoML prediction service: champions from the MLflow registry, tagged with the market regime.

    bentoml serve itff_platform.serving.service:ItffService --port 3000

Prediction endpoints need an X-API-Token (ITFF_API_TOKENS); tokens are rate limited; bodies are size limited.
Champions are verified against their SHA-256 manifest at load, and swapped when the alias moves."""

from __future__ import annotations

import logging
import threading
import time
from time import perf_counter  # a handler parameter is called `time` (the TradingView field)
import uuid
from datetime import datetime, timezone

import anyio
import bentoml
import numpy as np

from itff_platform.features.regime import REGIMES
from itff_platform.monitoring.outcomes import read_quality_summary
from itff_platform.monitoring.prediction_log import PredictionLog
from itff_platform.serving.answers import build_answer, log_record, model_age, trading_permission
from itff_platform.serving.batching import RowBatcher
from itff_platform.serving.guard import GuardMiddleware
from itff_platform.serving.online import (
    Candle,
    RequestError,
    checked_regime,
    features_from_candles,
    features_from_lake,
    features_from_row,
    normalise_symbol,
    parse_bar_time,
    regime_from_lake,
    tradingview_signature,
)
from itff_platform.settings import get_settings
from itff_platform.training.backtest import served_signals

log = logging.getLogger(__name__)
SETTINGS = get_settings()
LAKE_REGIME_CACHE = 4096  # bars whose lake regime is remembered

PREDICTIONS = bentoml.metrics.Counter(
    name="itff_predictions_total", documentation="Predictions served", labelnames=["symbol", "target", "regime", "signal"])
LATENCY = bentoml.metrics.Histogram(
    name="itff_prediction_latency_seconds", documentation="Model call latency", labelnames=["target"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))
BATCH_SIZE = bentoml.metrics.Histogram(
    name="itff_predict_batch_size", documentation="/predict rows scored per model call (adaptive batching)",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128))
REGIME_STATE = bentoml.metrics.Gauge(
    name="market_regime_state", documentation="1 for the regime of the newest bar served per symbol, else 0",
    labelnames=["symbol", "regime"])
QUALITY = bentoml.metrics.Gauge(
    name="prediction_quality_metric", documentation="Live quality of the champions, from the last evaluation",
    labelnames=["symbol", "target", "metric"])
SERVED_VERSION = bentoml.metrics.Gauge(
    name="itff_served_model_version", documentation="Registry version being served", labelnames=["model"])


@bentoml.service(name="itff-prediction-service", traffic={"timeout": 30}, workers=SETTINGS.serve_workers,
                  logging={"access": {"enabled": SETTINGS.serve_access_log}})
class ItffService:
    def __init__(self) -> None:
        from itff_platform.serving.store import ChampionStore

        self.settings = SETTINGS
        self.store = ChampionStore(self.settings)
        self.batcher = RowBatcher(SETTINGS.batch_max_size, on_batch=BATCH_SIZE.observe)
        self.prediction_log = PredictionLog.for_settings(self.settings)
        self._regimes: dict[str, tuple[str, object]] = {}
        self._lake_regimes: dict[tuple[str, datetime], str] = {}
        self._report(self.store.refresh())
        if self.settings.reload_interval_s > 0:
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
            time.sleep(self.settings.reload_interval_s)
            try:
                self._report(self.store.refresh())
            except Exception:  # the registry being briefly unreachable must not kill the poller
                log.exception("champion refresh failed; serving what is loaded")

    def _report(self, changes: dict[str, str]) -> None:
        for name, change in changes.items():
            log.info("%s: %s", name, change)
        for (symbol, target), model in self.store.models.items():
            SERVED_VERSION.labels(model=model.name).set(float(model.version))
        for row in read_quality_summary(self.settings):
            QUALITY.labels(symbol=row["symbol"], target=row["target"], metric=row["metric"]).set(row["value"])

    @bentoml.api(route="/predict")
    async def predict(
        self,
        symbol: str,
        target: str = "direction",
        features: dict[str, float] | list[float] | None = None,
        candles: list[Candle] | None = None,
        regime: str | None = None,
        bar_time: str | None = None,
    ) -> dict:
        """`bar_time` (ISO-8601, the time of the bar a feature row describes) lets the prediction be evaluated
        once its outcome is known, and looks the bar's regime up in the lake. A client's `regime` is used only
        when the lake cannot say, and must be one of the six names."""
        try:
            received = perf_counter()
            model, x, regime, at, computed = await self._inputs(symbol.upper(), target, features, candles, regime, bar_time)
        except RequestError as error:
            raise bentoml.exceptions.InvalidArgument(str(error)) from None
        return await self._answer(model, x, regime, at, received, "/predict", regime_computed=computed)

    def _champion(self, symbol: str, target: str):
        if symbol not in self.settings.symbols:
            raise RequestError(f"symbol: {symbol!r} is not served; served symbols are {self.settings.symbols}")
        if target not in self.settings.targets:
            raise RequestError(f"target: {target!r} is not one of {self.settings.targets}")
        model = self.store.get(symbol, target)
        if model is None:
            raise RequestError(f"symbol/target: no verified champion is loaded for {symbol} {target}")
        return model

    async def _inputs(self, symbol, target, features, candles, regime, bar_time):
        """(model, rows, regime, bar time, whether the regime was computed here rather than taken from the client)."""
        if (features is None) == (candles is None):
            raise RequestError("features/candles: send exactly one of them")
        claimed = checked_regime(regime)
        model = self._champion(symbol, target)
        if candles is not None:
            if bar_time is not None:
                raise RequestError("bar_time: only with features; with candles the bar time is the last candle's")
            x, regime, at = await self._candle_features(model, candles)
            computed = True
        else:
            x = features_from_row(features, model.meta["features"])
            at = parse_bar_time(bar_time, self.settings) if bar_time is not None else None
            regime, computed = await self._row_regime(symbol, at, claimed)
        if model.forecaster.scaler is not None and not np.isfinite(model.forecaster.scale(x)).all():
            # Finite in float64 but not once scaled to the model's float32 (e.g. 1e300): refuse it here.
            raise RequestError("features: a value is too large for the model (beyond float32 range once scaled)")
        return model, x, regime, at, computed

    async def _row_regime(self, symbol: str, at, claimed: str | None) -> tuple[str, bool]:
        """A feature row's regime: the lake's for that bar when it holds it, else the client's (validated), else unknown."""
        if at is None:
            return claimed or "unknown", False
        found = self._lake_regimes.get((symbol, at))
        if found is None:
            # ~10 ms of Delta scan, off the event loop. A bar's regime reads only past bars, so once the lake
            # has it, it is final: kept, since clients ask about the newest bar over and over.
            found = await anyio.to_thread.run_sync(regime_from_lake, self.settings, symbol, at)
            if found is not None:
                self._lake_regimes[(symbol, at)] = found
                if len(self._lake_regimes) > LAKE_REGIME_CACHE:
                    self._lake_regimes.pop(next(iter(self._lake_regimes)))  # the oldest entry
        return (found, True) if found is not None else (claimed or "unknown", False)

    async def _candle_features(self, model, candles):
        # Indicator computation takes milliseconds: off the event loop, so feature-row requests keep flowing.
        return await anyio.to_thread.run_sync(
            features_from_candles, candles, self.settings, model.forecaster.context_rows + 1, model.meta["features"])

    async def _answer(self, model, x, regime, bar_time, received: float, endpoint: str, regime_computed: bool = True) -> dict:
        started = perf_counter()
        out, spread = await self.batcher.predict(model, x)
        LATENCY.labels(target=model.target).observe(perf_counter() - started)
        answer = build_answer(model, x, out, spread, regime, bar_time, max_age_days=self.settings.model_max_age_days)
        answer["request_id"] = request_id = uuid.uuid4().hex
        PREDICTIONS.labels(symbol=model.symbol, target=model.target, regime=answer["regime"], signal=answer["signal"]).inc()
        if regime_computed:  # a client's word on the regime is not evidence of the market's state
            self._regime_seen(model.symbol, answer["regime"], bar_time)
        self.prediction_log.append(log_record(answer, x, request_id, endpoint, (perf_counter() - received) * 1000))
        return answer

    def _regime_seen(self, symbol: str, regime: str, bar_time) -> None:
        """market_regime_state: 1 for the regime of the symbol's newest bar seen, 0 for the others."""
        previous = self._regimes.get(symbol)
        if bar_time is None or regime == "unknown" or (previous and previous[1] > bar_time):
            return  # an older bar (a backfill, a replayed alert) says nothing about the market now
        self._regimes[symbol] = (regime, bar_time)
        if previous and previous[0] == regime:
            return
        for name in REGIMES:
            REGIME_STATE.labels(symbol=symbol, regime=name).set(1.0 if name == regime else 0.0)

    @bentoml.api(route="/predict_batch")
    def predict_batch(self, symbol: str, rows: list[list[float]], target: str = "direction") -> dict:
        """Many feature rows (in the model's order) in one call: probabilities (or bands) and signals as arrays."""
        try:
            model = self._champion(symbol.upper(), target)
            names = model.meta["features"]
            wrong = [i for i, row in enumerate(rows) if len(row) != len(names)]
            if wrong:
                raise RequestError(f"rows: each row must hold {len(names)} values, in order {names}; rows {wrong[:5]} do not")
            x = np.asarray(rows, dtype=np.float64) if rows else np.empty((0, len(names)))
            if not np.isfinite(x).all():
                raise RequestError("rows: NaN and infinity are refused")
        except RequestError as error:
            raise bentoml.exceptions.InvalidArgument(str(error)) from None
        # The deterministic output, as /predict serves it; no MC-dropout passes, since a batch reports no uncertainty.
        out = model.forecaster.predict_proba(x) if len(x) else np.empty(0)
        about = {"model_version": model.version, "family": model.family, **trading_permission(model.meta),
                 **model_age(model.meta, datetime.now(timezone.utc), self.settings.model_max_age_days)}
        if model.meta["task"] == "regression":
            return {**about, "bands": np.asarray(out).tolist()}
        signal, _ = served_signals(out, float(model.meta["threshold"]), target, about["tradable"])
        return {**about, "threshold": float(model.meta["threshold"]), "prob_up": np.round(out, 6).tolist(),
                "signal": signal.tolist()}

    @bentoml.api(route="/tradingview")
    async def tradingview(
        self,
        ticker: str,
        close: float,
        time: str,
        target: str = "direction",
        candles: list[Candle] | None = None,
        signature: str | None = None,
    ) -> dict:
        """A TradingView alert webhook: {"ticker": "{{ticker}}", "close": {{close}}, "time": "{{time}}"}."""
        import hmac

        received = perf_counter()
        try:
            if self.settings.tradingview_secret:
                expected = tradingview_signature(self.settings.tradingview_secret, ticker, time, close)
                if signature is None or not hmac.compare_digest(signature, expected):
                    raise RequestError("signature: missing or not HMAC-SHA256(secret, 'ticker|time|close')")
            symbol = normalise_symbol(ticker)
            model = self._champion(symbol, target)
            if candles is not None:
                x, regime, bar_time = await self._candle_features(model, candles)
                bar_close = candles[-1].close
            else:
                try:
                    at = datetime.fromisoformat(time.replace("Z", "+00:00"))
                    x, regime, bar_time, bar_close = await anyio.to_thread.run_sync(features_from_lake, self.settings, symbol, at)
                except (ValueError, OverflowError) as error:
                    if isinstance(error, RequestError):
                        raise
                    raise RequestError(f"time: {time!r} is not a usable ISO-8601 time such as 2024-09-30T23:00:00Z") from None
        except RequestError as error:
            raise bentoml.exceptions.InvalidArgument(str(error)) from None
        answer = await self._answer(model, x, regime, bar_time, received, "/tradingview")
        answer.update({"ticker": ticker, "alert_close": close, "bar_close": bar_close})
        return answer

    @bentoml.api(route="/consensus")
    def consensus(self, symbol: str, target: str = "direction", features: dict[str, float] | list[float] | None = None,
                  candles: list[Candle] | None = None, bar_time: str | None = None) -> dict:
        """The latest version of every family votes; the vote is the mean P(up), each family weighted by its
        confidence |p - 0.5|, so a family that is unsure barely counts. Whether to trade is the champion's call:
        the signal is flat when the champion's rule is not tradable. model_age_days and expired are the oldest voter's."""
        try:
            symbol = symbol.upper()
            champion = self._champion(symbol, target)  # same validation as /predict
            if (features is None) == (candles is None):
                raise RequestError("features/candles: send exactly one of them")
            if target == "forward_return":
                raise RequestError("target: consensus votes on probabilities; forward_return has bands, not votes")
            if candles is not None and bar_time is not None:
                raise RequestError("bar_time: only with features; with candles the bar time is the last candle's")
            at = parse_bar_time(bar_time, self.settings) if bar_time is not None else None
            members, skipped = self.store.family_models(symbol, target)
            breakdown, regime = [], None
            for model in members:
                if candles is not None:
                    x, regime, at = features_from_candles(candles, self.settings, model.forecaster.context_rows + 1, model.meta["features"])
                else:
                    x = features_from_row(features, model.meta["features"])
                breakdown.append(self._vote(model, x, at))
        except RequestError as error:
            raise bentoml.exceptions.InvalidArgument(str(error)) from None
        if regime is None and at is not None:
            regime = regime_from_lake(self.settings, symbol, at)
        weights = [abs(b["prob_up"] - 0.5) + 1e-9 for b in breakdown]
        prob = float(np.average([b["prob_up"] for b in breakdown], weights=weights))
        threshold = float(np.median([b["threshold"] for b in breakdown]))
        permission = trading_permission(champion.meta)
        signal = str(served_signals(prob, threshold, target, permission["tradable"])[0])
        ages = [b["model_age_days"] for b in breakdown if b["model_age_days"] is not None]
        return {"symbol": symbol, "target": target, "prob_up": prob, "signal": signal, "threshold": threshold,
                "regime": regime or "unknown", "bar_time": at.isoformat() if at is not None else None, **permission,
                "model_age_days": max(ages) if ages else None, "expired": any(b["expired"] for b in breakdown),
                "families": breakdown, "skipped_families": skipped,
                "served_at": datetime.now(timezone.utc).isoformat(timespec="milliseconds")}

    def _vote(self, model, x, at) -> dict:
        # The deterministic probability, as /predict serves it; no MC dropout, whose spread a vote does not use.
        prob = float(model.forecaster.predict_proba(x)[-1])
        return {"family": model.family, "model_version": model.version, "prob_up": prob,
                "threshold": float(model.meta["threshold"]), **trading_permission(model.meta),
                **model_age(model.meta, at or datetime.now(timezone.utc), self.settings.model_max_age_days)}

    @bentoml.api(route="/healthz")
    def healthz(self) -> dict:
        return {"status": "ok"}

    @bentoml.api(route="/readyz")
    def readyz(self, ctx: bentoml.Context) -> dict:
        ready = self.store.ready()
        if not ready:
            ctx.response.status_code = 503
        return {"ready": ready, "models": self.store.report()}

    @bentoml.api(route="/admin/reload")
    def reload(self) -> dict:
        changes = self.store.refresh()
        self._report(changes)
        return {"changes": changes, "models": self.store.report()}


ItffService.add_asgi_middleware(
    GuardMiddleware,
    tokens=SETTINGS.api_tokens,
    admin_token=SETTINGS.admin_token,
    per_minute=SETTINGS.rate_limit_per_minute,
    burst=SETTINGS.rate_limit_burst,
    workers=SETTINGS.serve_workers,
    max_bytes=SETTINGS.max_request_bytes,
)
