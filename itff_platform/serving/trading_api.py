"""The service's paper-trading face: the answers of POST /trade/execute and POST /risk/reset, GET /portfolio
(an ASGI route, since every BentoML API is a POST), and the Prometheus gauges of the account.

The domain is itff_platform.trading; this module only turns its results and refusals into HTTP."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio
import bentoml

from itff_platform.serving.guard import reply
from itff_platform.trading.desk import OrderDesk, OrderRequest, TradeRefusal

if TYPE_CHECKING:
    from starlette.responses import JSONResponse
    from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("itff_platform.serving")
PORTFOLIO = "/portfolio"

# One account shared by every worker: "mostrecent" exports the latest write, whichever worker made it.
EQUITY = bentoml.metrics.Gauge(
    name="itff_paper_equity_usd",
    documentation="Paper account equity, marked to market",
    multiprocess_mode="mostrecent",
)
DRAWDOWN = bentoml.metrics.Gauge(
    name="itff_paper_drawdown",
    documentation="Paper account drawdown from its peak since the last risk reset (a fraction)",
    multiprocess_mode="mostrecent",
)
EXPOSURE = bentoml.metrics.Gauge(
    name="itff_paper_exposure_usd",
    documentation="|position value| per symbol",
    labelnames=["symbol"],
    multiprocess_mode="mostrecent",
)
RISK_LOCKED = bentoml.metrics.Gauge(
    name="risk_locked",
    documentation="1 while orders are refused (423) for the drawdown, until POST /risk/reset",
    multiprocess_mode="mostrecent",
)
ORDERS = bentoml.metrics.Gauge(
    name="itff_paper_orders",
    documentation="Orders in the ledger by status (filled, abandoned, pending)",
    labelnames=["status"],
    multiprocess_mode="mostrecent",
)
REFUSED = bentoml.metrics.Counter(
    name="itff_paper_orders_refused_total",
    documentation="Orders refused, by HTTP status (400, 409, 412, 422, 423)",
    labelnames=["status"],
)


def report(portfolio: dict[str, Any], symbols: list[str]) -> None:
    EQUITY.set(portfolio["equity"])
    DRAWDOWN.set(portfolio["drawdown"])
    RISK_LOCKED.set(1.0 if portfolio["locked"] else 0.0)
    for symbol in symbols:
        EXPOSURE.labels(symbol=symbol).set(portfolio["exposure"].get(symbol, 0.0))
    for status, count in portfolio["orders"].items():
        ORDERS.labels(status=status).set(float(count))


def report_quietly(desk: OrderDesk) -> None:
    """The gauges from the ledger; a lake that cannot be read must not fail the order that was just answered."""
    try:
        report(desk.portfolio(), desk.settings.symbols)
    except Exception:
        log.exception("paper account gauges: the portfolio could not be valued")


def refused(error: TradeRefusal, endpoint: str) -> JSONResponse:
    from starlette.responses import JSONResponse

    REFUSED.labels(status=str(error.status)).inc()
    log.info("client error %d on %s: %s", error.status, endpoint, str(error)[:300])
    return JSONResponse(error.body(), status_code=error.status)


async def execute(desk: OrderDesk, request: OrderRequest) -> dict[str, Any] | JSONResponse:
    """The order's answer, or its refusal; the ledger's lock and Delta commits run off the event loop."""
    try:
        answer = await anyio.to_thread.run_sync(desk.execute, request)
    except TradeRefusal as error:
        return refused(error, "/trade/execute")
    await anyio.to_thread.run_sync(report_quietly, desk)
    return answer


async def reset(desk: OrderDesk, reason: str | None) -> dict[str, Any]:
    answer = await anyio.to_thread.run_sync(desk.reset, reason)
    log.warning("risk reset by an admin: %s (was locked: %s)", reason or "no reason given", answer["was_locked"])
    await anyio.to_thread.run_sync(report_quietly, desk)
    return answer


class PortfolioRoute:
    """GET /portfolio, behind the guard (added after it, so it sits inside: the token is checked first)."""

    def __init__(self, app: ASGIApp, portfolio: Callable[[], Awaitable[dict[str, Any]]]) -> None:
        self.app, self.portfolio = app, portfolio

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") != PORTFOLIO:
            return await self.app(scope, receive, send)
        if scope.get("method") not in ("GET", "HEAD"):
            return await reply(send, 405, {"error": "method: use GET", "field": "method"}, {"allow": "GET, HEAD"})
        return await reply(send, 200, await self.portfolio())
