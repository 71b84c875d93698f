"""The order desk: POST /trade/execute, GET /portfolio and POST /risk/reset as plain functions.

An order is validated (400 naming the field), replayed when its idempotency key is known (409 when the key comes
with another body), gated on confidence (412) and on the drawdown lock (423), sized by confidence and the volatility
target, clipped at the symbol's cap, recorded as an intent, filled by the broker and recorded as filled, in that
order, under the ledger's lock."""

from __future__ import annotations

import hashlib
import json
import math
import time
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from itff_platform.contracts.costs import fee
from itff_platform.rules import bar_open
from itff_platform.settings import Settings
from itff_platform.trading.broker import Broker, LiveBrokerMissing, broker_for
from itff_platform.trading.ledger import Book, Ledger, event
from itff_platform.trading.market import LakePrices, Quote
from itff_platform.trading.sizing import SIDES, size_order

MODES = ("paper", "live")
MAX_KEY_CHARS = 128


class TradeRefusal(Exception):
    """An order not taken: the HTTP status, the field at fault and the rule, and extra answer fields."""

    def __init__(self, status: int, field: str, rule: str, **details: Any) -> None:
        super().__init__(f"{field}: {rule}")
        self.status, self.field, self.details = status, field, details

    def body(self) -> dict[str, Any]:
        return {"ok": False, "error": str(self), "field": self.field, **self.details}


@dataclass(frozen=True)
class OrderRequest:
    symbol: str
    side: str
    qty_usd: float
    confidence: float
    idempotency_key: str | None = None
    price: float | None = None  # a fill price of the caller's (tests, replays), when accepted
    bar_time: str | None = None  # the bar the order was decided on: it fills at the next bar's open
    mode: str | None = None

    def digest(self, mode: str, decided: datetime | None) -> str:
        """The request's identity under its key: the same key with another body is a client's mistake. Hashed as
        the desk reads it (side in lower case, the mode it trades in, the decided bar, amounts as floats), so
        "BUY" and "buy", or an omitted and an explicit default mode, are the same order, not a 409."""
        body = {
            "symbol": self.symbol.strip().upper(),
            "side": self.side.strip().lower(),
            "qty_usd": float(self.qty_usd),
            "confidence": float(self.confidence),
            "price": float(self.price) if self.price is not None else None,
            "bar_time": decided.isoformat() if decided is not None else None,
            "mode": mode,
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class Market:
    """The lake's prices an order is decided with, read before the ledger's lock is taken."""

    decided: datetime | None  # the bar the order was decided on
    marks: dict[str, Quote | None]
    vol: float | None
    quote: Quote | None


def ledger_folder(settings: Settings) -> Path:
    """The paper account's folder (its ledger, and the autopilot's decisions beside it)."""
    folder = settings.trading.ledger_dir
    if folder is None:
        return settings.lake.root / "trading"
    return folder if folder.is_absolute() else settings.home / folder


class OrderDesk:
    def __init__(self, settings: Settings, prices: LakePrices | None = None, pause_after_intent_s: float = 0.0) -> None:
        """`pause_after_intent_s`: a test hook; the pause between the durable intent and the fill, where a test
        kills the process."""
        self.settings, self.limits = settings, settings.trading
        self.prices = prices or LakePrices(settings)
        self.ledger = Ledger(ledger_folder(settings), self.limits.paper_cash)
        self.pause_after_intent_s = pause_after_intent_s

    # --- orders
    def execute(self, request: OrderRequest) -> dict[str, Any]:
        """The acknowledged order; raises TradeRefusal for an order not taken."""
        broker, direction, decided = self._checked(request)
        request = replace(request, side=request.side.strip().lower())
        digest = request.digest(broker.mode, decided)
        market = self._market(request, decided)  # the lake is read before the lock: other orders do not wait on it
        with self.ledger.locked() as book:
            book = self._abandon_orphans(book)
            if request.idempotency_key is not None:
                known = book.order(request.idempotency_key)
                if known is not None:
                    if known["body_sha256"] != digest:
                        raise TradeRefusal(
                            409,
                            "idempotencyKey",
                            f"{request.idempotency_key!r:.60} was used for another order "
                            f"({known['side']} {known['requested_usd']:g} USD of {known['symbol']}); "
                            "a key names one order: send a new key",
                        )
                    return self.answer(known, replayed=True)
            threshold = self.limits.confidence_threshold
            if request.confidence < threshold:
                raise TradeRefusal(
                    412,
                    "confidence",
                    f"{request.confidence:g} is below the threshold {threshold:g} (ITFF_CONFIDENCE_THRESHOLD)",
                    threshold=threshold,
                )
            valuation = self.valuation(book, market.marks)
            if book.locked or valuation["drawdown_pct"] > self.limits.max_drawdown_pct:
                if not book.locked:
                    book = self.ledger.append(
                        book, event("lock", equity_after=valuation["equity"], message=self._lock_message(valuation))
                    )
                raise TradeRefusal(
                    423,
                    "risk",
                    f"locked: the drawdown reached {valuation['drawdown_pct']:.2f} %, beyond "
                    f"{self.limits.max_drawdown_pct:g} % (ITFF_MAX_DRAWDOWN_PCT); an admin POST /risk/reset unlocks",
                    drawdown=valuation["drawdown"],
                    locked=True,
                )
            return self._fill(book, broker, request, direction, digest, valuation, market)

    def _market(self, request: OrderRequest, decided: datetime | None) -> Market:
        """What an order needs from the lake: marks of the symbols held (as of an unlocked read of the ledger; a
        symbol bought meanwhile is marked at its last fill) and of the order's, its volatility and fill price."""
        return Market(
            decided,
            self._marks(request.symbol, as_of=self._bar_end(decided)),
            self.prices.annualised_vol(request.symbol, decided),
            self._reference(request, decided),
        )

    def _bar_end(self, decided: datetime | None) -> datetime | None:
        return decided + timedelta(seconds=self.settings.interval_seconds) if decided is not None else None

    def _marks(self, *also: str, as_of: datetime | None = None) -> dict[str, Quote | None]:
        """The lake's marks of the symbols held, as of an unlocked read of the ledger, and of `also`. `as_of`:
        the end of the bar an order was decided on, so an order for a past bar (a replay) is judged on the closes
        known then, not on later ones (look-ahead in the drawdown lock, the cap and the recorded equity)."""
        held = {*self.ledger.read().positions(), *also}
        return {symbol: self.prices.mark(symbol, as_of) for symbol in sorted(held)}

    def _fill(
        self,
        book: Book,
        broker: Broker,
        request: OrderRequest,
        direction: int,
        digest: str,
        valuation: dict[str, Any],
        market: Market,
    ) -> dict[str, Any]:
        symbol = request.symbol
        position_usd = valuation["exposure_signed"].get(symbol, 0.0)
        vol = market.vol
        size = size_order(
            request.qty_usd,
            request.confidence,
            direction,
            position_usd,
            self.limits.per_symbol_usd_cap,
            vol,
            self.limits.target_ann_vol,
        )
        if size.final_usd <= 0:
            raise TradeRefusal(
                422,
                "qtyUsd",
                f"{symbol}'s exposure ({position_usd:+.2f} USD) is at its cap of {self.limits.per_symbol_usd_cap:g} "
                "USD (ITFF_PER_SYMBOL_USD_CAP): nothing can be added on this side",
                clippedUsd=size.clipped_usd,
            )
        quote = market.quote
        if quote is None:
            raise TradeRefusal(
                422, "symbol", f"the lake holds no {request.symbol} bar to fill at: materialize silver first"
            )
        if direction > 0 and size.final_usd + fee(size.final_usd, self.limits.fees_bps) > book.cash:
            raise TradeRefusal(
                422, "qtyUsd", f"{size.final_usd:.2f} USD (after sizing) is more than the cash, {book.cash:.2f} USD"
            )
        order_id = uuid.uuid4().hex
        intent = event(
            "order",
            order_id=order_id,
            idempotency_key=request.idempotency_key or f"auto-{order_id}",
            body_sha256=digest,
            symbol=symbol,
            side=request.side,
            mode=broker.mode,
            status="pending",
            confidence=request.confidence,
            requested_usd=request.qty_usd,
            sized_usd=size.sized_usd,
            clipped_usd=size.clipped_usd,
            vol_scale=size.vol_scale,
            annualised_vol=size.annualised_vol,
            decided_bar=market.decided,
            reference_price=quote.price,
            price_source=quote.source,
            price_bar=quote.bar_time,
        )
        book = self.ledger.append(book, intent)  # on disk before anything is filled or acknowledged
        if self.pause_after_intent_s:
            time.sleep(self.pause_after_intent_s)
        fill = broker.fill(symbol, direction, size.final_usd, quote.price)
        positions = book.positions()
        units = positions.get(symbol, 0.0) + fill.quantity
        cash = book.cash - fill.notional_usd - fill.fee_usd
        marks = {**valuation["marks"]}
        marks.setdefault(symbol, fill.price)
        held = {**positions, symbol: units}
        equity = cash + sum(q * marks.get(s, 0.0) for s, q in held.items())
        done = {
            **intent,
            "kind": "fill",
            "status": "filled",
            "price": fill.price,
            "quantity": fill.quantity,
            "notional_usd": fill.notional_usd,
            "fee_usd": fill.fee_usd,
            "slippage_bps": fill.slippage_bps,
            "cash_after": cash,
            "position_after": units,
            "equity_after": equity,
            "recorded_at": datetime.now(UTC),
        }
        self.ledger.append(book, done)
        return self.answer(done, replayed=False)

    def _reference(self, request: OrderRequest, decided: datetime | None) -> Quote | None:
        if request.price is not None:
            return Quote(request.price, decided or datetime.now(UTC), "request")
        return self.prices.fill_reference(request.symbol, decided)

    def _abandon_orphans(self, book: Book) -> Book:
        """Intents left pending by a process that died before filling them: abandoned, never filled later."""
        orphans = book.pending()
        if orphans.is_empty():
            return book
        rows = [
            {
                **row,
                "kind": "abandon",
                "status": "abandoned",
                "message": "the service stopped after recording this order and before filling it; it was never "
                "acknowledged and will never fill: send it again with a new idempotencyKey",
                "recorded_at": datetime.now(UTC),
            }
            for row in orphans.iter_rows(named=True)
        ]
        return self.ledger.append(book, *rows)

    def recover(self) -> int:
        """At start: abandon what a killed process left pending. Returns how many."""
        with self.ledger.locked() as book:
            pending = book.pending().height
            self._abandon_orphans(book)
        return pending

    def _checked(self, request: OrderRequest) -> tuple[Broker, int, datetime | None]:
        if request.symbol not in self.settings.symbols:
            raise TradeRefusal(
                400, "symbol", f"{request.symbol!r:.40} is not traded; symbols are {self.settings.symbols}"
            )
        side = request.side.strip().lower()
        if side not in SIDES:
            raise TradeRefusal(400, "side", f"{request.side!r:.20} is not one of {list(SIDES)}")
        if not math.isfinite(request.qty_usd) or request.qty_usd <= 0:
            raise TradeRefusal(400, "qtyUsd", f"{request.qty_usd!r} must be a finite amount of USD > 0")
        if not math.isfinite(request.confidence) or not 0 <= request.confidence <= 1:
            raise TradeRefusal(400, "confidence", f"{request.confidence!r} must be in [0, 1]")
        key = request.idempotency_key
        if key is not None and (not key.strip() or len(key) > MAX_KEY_CHARS or not key.isprintable()):
            raise TradeRefusal(400, "idempotencyKey", f"must be 1 to {MAX_KEY_CHARS} printable characters")
        if request.price is not None:
            if not self.limits.accept_request_price:
                raise TradeRefusal(
                    400, "price", "orders fill at the lake's prices here (ITFF_ACCEPT_REQUEST_PRICE is off)"
                )
            if not math.isfinite(request.price) or request.price <= 0:
                raise TradeRefusal(400, "price", f"{request.price!r} must be a finite price > 0")
        mode = (request.mode or self.limits.trading_mode).strip().lower()
        if mode not in MODES:
            raise TradeRefusal(400, "mode", f"{mode!r:.20} is not one of {list(MODES)}")
        try:
            broker = broker_for(mode, self.limits.fees_bps, self.limits.slippage_bps)
        except LiveBrokerMissing as error:
            raise TradeRefusal(400, "mode", str(error).split(": ", 1)[1]) from None
        return broker, SIDES[side], self._decided_bar(request.bar_time)

    def _decided_bar(self, value: str | None) -> datetime | None:
        """The bar an order was decided on, by the rule the service reads a prediction's bar_time with."""
        if value is None:
            return None
        try:
            return bar_open(value, self.settings.interval_seconds, self.settings.interval)
        except ValueError as error:
            raise TradeRefusal(400, "barTime", str(error)) from None

    # --- the account
    def valuation(self, book: Book, quotes: dict[str, Quote | None] | None = None) -> dict[str, Any]:
        """Cash, positions marked at the lake's newest closes (else their last fill), equity, peak and drawdown.
        `quotes`: marks read beforehand (an order reads them before taking the ledger's lock); else read here."""
        held = book.positions()
        last = book.last_fill_prices()
        marks: dict[str, float] = {}
        mark_bars: dict[str, str | None] = {}
        for symbol in held:
            quote = quotes.get(symbol) if quotes is not None else self.prices.mark(symbol)
            marks[symbol] = quote.price if quote is not None else last[symbol]
            mark_bars[symbol] = quote.bar_time.isoformat() if quote is not None else None
        signed = {s: q * marks[s] for s, q in held.items()}
        cash = book.cash
        equity = cash + sum(signed.values())
        peak = max(book.recorded_peak, equity)
        drawdown = max(0.0, 1 - equity / peak) if peak > 0 else 0.0
        return {
            "cash": cash,
            "equity": equity,
            "peak_equity": peak,
            "drawdown": drawdown,
            "drawdown_pct": 100 * drawdown,
            "marks": marks,
            "mark_bars": mark_bars,
            "positions": held,
            "exposure_signed": signed,
        }

    def portfolio(self) -> dict[str, Any]:
        book = self.ledger.read()
        value = self.valuation(book)
        return {
            "mode": self.limits.trading_mode,
            "cash": value["cash"],
            "equity": value["equity"],
            "peak_equity": value["peak_equity"],
            "drawdown": value["drawdown"],
            "drawdown_pct": value["drawdown_pct"],
            "locked": self._locked(book, value),
            "positions": [
                {
                    "symbol": symbol,
                    "quantity": units,
                    "mark": value["marks"][symbol],
                    "mark_bar": value["mark_bars"][symbol],
                    "value_usd": value["exposure_signed"][symbol],
                }
                for symbol, units in sorted(value["positions"].items())
            ],
            "exposure": {s: abs(v) for s, v in sorted(value["exposure_signed"].items())},
            "orders": book.counts_by_status(),
            "config": self.config(),
        }

    def _locked(self, book: Book, value: dict[str, Any]) -> bool:
        """What the next order would meet: a recorded lock, or a drawdown past the limit it would record."""
        return book.locked or value["drawdown_pct"] > self.limits.max_drawdown_pct

    def risk(self) -> dict[str, Any]:
        """The health answer's `risk`: runbook 004's risk.drawdown, risk.locked and the config."""
        book = self.ledger.read()
        value = self.valuation(book)
        return {
            "drawdown": value["drawdown"],
            "drawdown_pct": value["drawdown_pct"],
            "locked": self._locked(book, value),
            "equity": value["equity"],
            "config": self.config(),
        }

    def config(self) -> dict[str, Any]:
        limits = self.limits
        return {
            "mode": limits.trading_mode,
            "confidence_threshold": limits.confidence_threshold,
            "max_drawdown_pct": limits.max_drawdown_pct,
            "per_symbol_usd_cap": limits.per_symbol_usd_cap,
            "target_ann_vol": limits.target_ann_vol,
            "slippage_bps": limits.slippage_bps,
            "fees_bps": limits.fees_bps,
            "paper_cash": limits.paper_cash,
        }

    def reset(self, reason: str | None = None) -> dict[str, Any]:
        """Unlock: the drawdown is measured from the equity of now on."""
        marks = self._marks()
        with self.ledger.locked() as book:
            book = self._abandon_orphans(book)
            value = self.valuation(book, marks)
            was_locked = self._locked(book, value)
            self.ledger.append(
                book, event("reset", equity_after=value["equity"], message=(reason or "risk reset")[:500])
            )
        return {"ok": True, "was_locked": was_locked, "locked": False, "equity": value["equity"], "drawdown": 0.0}

    def _lock_message(self, value: dict[str, Any]) -> str:
        return f"drawdown {value['drawdown_pct']:.2f} % beyond {self.limits.max_drawdown_pct:g} %"

    # --- answers
    def answer(self, row: dict[str, Any], replayed: bool) -> dict[str, Any]:
        """Runbook 004's {ok, dryRun, order, message}, with the fill and the sizing."""
        filled = row["status"] == "filled"
        clipped = row["clipped_usd"] or 0.0
        traded = abs(row["notional_usd"]) if filled else row["sized_usd"] - clipped
        message = row.get(
            "message"
        ) or f"{'replayed: ' if replayed else ''}paper {row['side']} of {traded:.2f} USD {row['symbol']} filled" + (
            f"; {clipped:.2f} USD clipped at the cap" if clipped > 0 else ""
        )
        return {
            "ok": filled,
            "dryRun": row["mode"] == "paper",
            "replayed": replayed,
            "message": message,
            "order": {
                "id": row["order_id"],
                "status": row["status"],
                "symbol": row["symbol"],
                "side": row["side"],
                "qtyUsd": traded,
                "requestedUsd": row["requested_usd"],
                "sizedUsd": row["sized_usd"],
                "clippedUsd": clipped,
                "volScale": row["vol_scale"],
                "confidence": row["confidence"],
                "idempotencyKey": row["idempotency_key"],
                "mode": row["mode"],
            },
            "fill": {
                "price": row["price"],
                "referencePrice": row["reference_price"],
                "priceSource": row["price_source"],
                "priceBar": row["price_bar"].isoformat() if row["price_bar"] else None,
                "quantity": row["quantity"],
                "feeUsd": row["fee_usd"],
                "slippageBps": row["slippage_bps"],
            }
            if filled
            else None,
        }
