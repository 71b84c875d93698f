"""The OpenAPI document at /docs.json: BentoML's, plus what it cannot say on its own.

- The `X-API-Token` scheme, on every operation that needs it, so Swagger's "Authorize" and "Try it out" work.
- The configured symbols and targets as enums, the feature names, and examples that the service really answers:
  a feature row and the candles it came from, both from the packaged sample.
- Typed answers. The endpoints still return plain dicts (validating every answer through a model would add work to
  each request); the models below describe them, and the tests check real answers against them.
- BentoML flattens every `anyOf` to its first member (`features` would read as an object only): restored here.

Built once per worker, on the first request for the document."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from itff_platform.rules import REGIMES
from itff_platform.settings import Settings

if TYPE_CHECKING:  # a Literal built at run time from the rules' regimes: mypy sees a str
    Regime = str
else:
    Regime = Literal[tuple(REGIMES)]
Signal = Literal["long", "short", "flat"]


class Shut(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an answer with a field the document does not name fails the tests


class Standing(Shut):
    """Whether a model's rule trades, and how old it is (answers.trading_permission and answers.model_age)."""

    tradable: bool = Field(description="its trading rule had a significant walk-forward edge after fees")
    tradable_reason: str | None
    model_age_days: float | None = Field(
        description="days from the model's last training bar to the bar asked about (or now)"
    )
    expired: bool = Field(description="model_age_days is past ITFF_MODEL_MAX_AGE_DAYS")


class Answer(Standing):
    """A prediction: probabilities for direction and level_up, quantile bands for forward_return."""

    symbol: str
    target: str
    regime: Regime = Field(
        description="the lake's regime of the bar, else the candles', else the client's, else unknown"
    )
    model_version: str = Field(description="the registry version of the champion that answered")
    family: str
    signal: Signal = Field(description="flat when not confident enough, or when the champion is not tradable")
    out_of_distribution: bool = Field(description="a scaled feature more than 6 training standard deviations out")
    served_at: str
    bar_time: str | None = Field(description="the bar the answer is about: bar_time, or the last candle's")
    request_id: str = Field(description="the prediction log's key for this answer")
    prob_up: float | None = Field(None, description="P(up); direction and level_up")
    confidence: float | None = Field(None, description="max(prob_up, 1 - prob_up)")
    threshold: float | None = Field(None, description="the confidence at which the champion's rule trades")
    allow: bool | None = Field(None, description="confidence >= threshold and the champion is tradable")
    uncertainty: float | None = Field(None, description="MC-dropout standard deviation (torch champions), else null")
    p10: float | None = Field(None, description="forward_return's 10 % quantile")
    p50: float | None = None
    p90: float | None = None


class AlertAnswer(Answer):
    ticker: str
    alert_close: float
    bar_close: float = Field(description="the close of the bar that answered")
    stale: bool = Field(description="answered from an older bar than the alert's (ITFF_TRADINGVIEW_STALE=flag)")
    age_bars: int


class BatchAnswer(Standing):
    model_version: str
    family: str
    out_of_distribution: list[bool] = Field(description="one per row")
    threshold: float | None = None
    prob_up: list[float] | None = Field(None, description="one per row; direction and level_up")
    signal: list[Signal] | None = None
    bands: list[list[float]] | None = Field(None, description="[p10, p50, p90] per row; forward_return")


class Vote(Standing):
    family: str
    model_version: str
    prob_up: float
    threshold: float
    skill: float | None = Field(
        description="its holdout loss improvement over the better baseline, recorded at training (null: unknown)"
    )
    skill_baseline: str | None = Field(description="the baseline its skill is measured against")
    weight: float = Field(description="its share of the vote: skill over the voters' total; 0 without positive skill")


class ConsensusAnswer(Standing):
    """tradable is the champion's (a vote never trades a rule the champion would not); the age is the oldest voter's."""

    symbol: str
    target: str
    prob_up: float = Field(
        description="the families' mean P(up), each weighted by its walk-forward skill; 0.5 when none has skill"
    )
    prob_long: float = Field(description="runbook 004's name for prob_up")
    prob_short: float = Field(description="1 - prob_long")
    confidence: float = Field(description="max(prob_long, prob_short)")
    signal: Signal
    allow: bool = Field(description="the signal trades and confidence >= threshold (ITFF_CONFIDENCE_THRESHOLD)")
    reason: str | None = Field(description="why allow is false; null when it is true")
    threshold: float = Field(description="the confidence threshold allow is judged against")
    decision_threshold: float = Field(
        description="the median decision threshold of the voters with weight, the signal's rule"
    )
    model_version: str = Field(description="the ensemble's id: the same voting (family, version) set, the same id")
    family: Literal["ensemble"] = Field(description="the prediction log's family of a consensus answer")
    request_id: str = Field(description="the prediction log's id of this answer")
    regime: Regime
    bar_time: str | None
    families: list[Vote]
    skipped_families: dict[str, str] = Field(description="family -> why it does not vote")
    served_at: str


class ModelState(Shut):
    name: str
    serving_version: str | None
    healthy: bool
    problem: str | None
    refused_versions: list[str] = Field(description="versions that failed their SHA-256 manifest")
    reason: str | None = Field(description="without a champion: the registry's record of the last promotion decision")
    judged_version: str | None
    remedy: str | None = Field(description="without a champion: what to do")


class RiskConfig(Shut):
    mode: str
    confidence_threshold: float
    max_drawdown_pct: float
    per_symbol_usd_cap: float
    target_ann_vol: float
    slippage_bps: float
    fees_bps: float
    paper_cash: float


class Risk(Shut):
    """Runbook 004's health fields: the paper account's drawdown, whether orders are locked, and the limits."""

    drawdown: float = Field(description="from the peak equity since the last risk reset, a fraction")
    drawdown_pct: float
    locked: bool = Field(description="orders get 423 until an admin POST /risk/reset")
    equity: float
    config: RiskConfig


class Readiness(Shut):
    ready: bool = Field(description="every champion the registry names is loaded and verified")
    models: dict[str, ModelState]
    risk: Risk | None = Field(None, description="the paper account; null when it could not be valued")


class Order(Shut):
    id: str
    status: Literal["filled", "abandoned"] = Field(
        description="abandoned: the service stopped between recording the order and filling it; it never fills"
    )
    symbol: str
    side: Literal["buy", "sell"]
    qtyUsd: float = Field(description="USD traded, after sizing and the cap")
    requestedUsd: float
    sizedUsd: float = Field(description="qtyUsd x confidence x min(1, target vol / realized vol)")
    clippedUsd: float = Field(description="taken off by ITFF_PER_SYMBOL_USD_CAP")
    volScale: float | None
    confidence: float
    idempotencyKey: str
    mode: str


class OrderFill(Shut):
    price: float = Field(description="after slippage")
    referencePrice: float
    priceSource: Literal["next_open", "newest_close", "request"]
    priceBar: str | None
    quantity: float = Field(description="units, signed")
    feeUsd: float
    slippageBps: float


class OrderAnswer(Shut):
    """Runbook 004's {ok, dryRun, order, message}; the same key answers the same order (replayed: true)."""

    ok: bool
    dryRun: bool = Field(description="true in paper mode")
    replayed: bool
    message: str
    order: Order
    fill: OrderFill | None


class RiskReset(Shut):
    ok: bool
    was_locked: bool
    locked: bool
    equity: float
    drawdown: float


class Position(Shut):
    symbol: str
    quantity: float
    mark: float = Field(description="the lake's newest close (else the last fill)")
    mark_bar: str | None
    value_usd: float


class Portfolio(Shut):
    mode: str
    cash: float
    equity: float
    peak_equity: float
    drawdown: float
    drawdown_pct: float
    locked: bool
    positions: list[Position]
    exposure: dict[str, float] = Field(description="symbol -> |position value| in USD")
    orders: dict[str, int] = Field(description="status -> orders in the ledger")
    config: RiskConfig


class Reloaded(Shut):
    changes: dict[str, str] = Field(description="model -> what changed")
    models: dict[str, ModelState]


class Refusal(Shut):
    ok: bool | None = Field(None, description="false, on /trade/execute")
    error: str = Field(description="field: rule, in one line")
    field: str | None = None
    reason: str | None = Field(None, description="with no champion: why (the last promotion decision)")
    remedy: str | None = Field(None, description="with no champion: what to do")
    retry_after_s: int | None = Field(None, description="with a 429")
    threshold: float | None = Field(None, description="with a 412: ITFF_CONFIDENCE_THRESHOLD")
    drawdown: float | None = Field(None, description="with a 423")
    locked: bool | None = Field(None, description="with a 423")
    clippedUsd: float | None = Field(None, description="with a 422 at the cap")


ANSWERS: dict[str, type[BaseModel]] = {
    "/predict": Answer,
    "/tradingview": AlertAnswer,
    "/predict_batch": BatchAnswer,
    "/consensus": ConsensusAnswer,
    "/admin/reload": Reloaded,
    "/trade/execute": OrderAnswer,
    "/risk/reset": RiskReset,
}
MODELS: list[type[BaseModel]] = [*ANSWERS.values(), Readiness, Refusal, Portfolio]
SCHEMES = {
    "ApiToken": {"type": "apiKey", "in": "header", "name": "X-API-Token", "description": "one of ITFF_API_TOKENS"},
    "AdminToken": {"type": "apiKey", "in": "header", "name": "X-API-Token", "description": "ITFF_ADMIN_TOKEN"},
    "TokenInUrl": {
        "type": "apiKey",
        "in": "query",
        "name": "token",
        "description": "an API token in the webhook URL (TradingView alerts cannot set headers)",
    },
}
REFUSALS = {
    "400": "the field and the rule it broke (with no champion: why, and what to do)",
    "401": "X-API-Token missing or wrong",
    "413": "body over ITFF_MAX_REQUEST_BYTES",
    "415": "not JSON",
    "429": "over the token's rate limit, or this address's failed-authentication budget",
}
TRADE_REFUSALS = {
    "409": "idempotencyKey reused with another body",
    "412": "confidence below ITFF_CONFIDENCE_THRESHOLD (the threshold is in the body)",
    "422": "nothing left under the symbol's cap, not enough cash, or no price in the lake",
    "423": "locked by the drawdown (ITFF_MAX_DRAWDOWN_PCT) until an admin POST /risk/reset",
}
ADMIN_PATHS = ("/risk/reset",)  # besides /admin/...


def documented(spec: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The document BentoML generated (as a dict), completed. The argument is changed and returned."""
    schemas = spec["components"]["schemas"]
    for model in MODELS:
        found = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update({name: openapi_30(s) for name, s in found.pop("$defs", {}).items()})
        schemas[model.__name__] = openapi_30(found)
    spec["components"]["securitySchemes"] = SCHEMES
    examples = Examples(settings)
    spec["components"]["examples"] = examples.named()
    schemas["Candle"]["example"] = examples.candles[-1]
    for path, item in spec["paths"].items():
        if "post" in item:
            document_operation(path, item["post"], settings, examples)
    document_probes(spec["paths"])
    spec["paths"]["/portfolio"] = {
        "get": {
            "summary": "the paper account",
            "description": "Positions marked to market at the lake's newest closes, cash, equity, drawdown, "
            "exposure per symbol, orders by status and the risk limits.",
            "security": [{"ApiToken": []}],
            "responses": {
                "200": answer_with("Portfolio", "the paper account"),
                "401": answer_with("Refusal", REFUSALS["401"]),
                "429": answer_with("Refusal", REFUSALS["429"]),
            },
        }
    }
    return spec


def document_operation(path: str, operation: dict[str, Any], settings: Settings, examples: Examples) -> None:
    operation["security"] = (
        [{"AdminToken": []}]
        if path.startswith("/admin/") or path in ADMIN_PATHS
        else [{"ApiToken": []}, {"TokenInUrl": []}]
        if path == "/tradingview"
        else [{"ApiToken": []}]
    )
    responses = {str(code): answer for code, answer in operation["responses"].items()}
    if path in ANSWERS:
        responses["200"] = answer_with(ANSWERS[path].__name__, "the answer")
    responses.update({code: answer_with("Refusal", why) for code, why in REFUSALS.items()})
    if path == "/trade/execute":
        responses.update({code: answer_with("Refusal", why) for code, why in TRADE_REFUSALS.items()})
    responses.pop("404", None)  # BentoML's generic one: no endpoint here answers 404
    operation["responses"] = dict(sorted(responses.items()))
    body = operation["requestBody"]["content"]["application/json"]
    properties = body["schema"].get("properties", {})
    if "symbol" in properties:
        properties["symbol"].update(enum=settings.symbols, description="one of the configured symbols (ITFF_SYMBOLS)")
    if "target" in properties:
        properties["target"].update(enum=list(settings.training.targets))
    if "side" in properties:
        properties["side"].update(enum=["buy", "sell"])
    if "mode" in properties:
        properties["mode"].update(enum=["paper", "live"], description="paper (default); live is refused")
    if "regime" in properties:
        properties["regime"] = {
            "type": "string",
            "enum": REGIMES,
            "nullable": True,
            "default": None,
            "description": "used only when the lake does not hold the bar",
        }
    if "features" in properties:
        properties["features"] = examples.features_schema()
    if "candles" in properties:
        properties["candles"] = {
            "type": "array",
            "items": {"$ref": "#/components/schemas/Candle"},
            "nullable": True,
            "default": None,
            "description": f"oldest first, at least {examples.fewest} bars "
            "(744 for a regime); the features are computed as the lake computes them",
        }
    # By reference: the candles example is ~40 KB, written once in components.examples.
    named = {
        "/predict": ["features", "candles"],
        "/consensus": ["features", "candles"],
        "/predict_batch": ["rows"],
        "/tradingview": ["alert"],
    }.get(path, [])
    if named:
        body["examples"] = {name: {"$ref": f"#/components/examples/{name}"} for name in named}


def document_probes(paths: dict[str, Any]) -> None:
    """BentoML's GET probes: /readyz also lists the models, with a token."""
    readyz = paths["/readyz"]["get"]
    readyz["security"] = [{}, {"ApiToken": []}, {"AdminToken": []}]  # the token is optional here
    readyz["description"] += (
        " Without a token, the bare probe (an empty body; Kubernetes calls it). With a token (an API "
        "token or the admin token), every model's state as JSON; a model without a champion "
        "says why and what to do."
    )
    readyz["responses"] = {
        "200": answer_with("Readiness", "ready (with a token: the models' states)"),
        "503": answer_with("Readiness", "not ready (with a token: the models' states)"),
    }


def answer_with(schema: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


def openapi_30(schema: Any) -> Any:
    """Pydantic writes JSON Schema 2020-12; the document is OpenAPI 3.0, which says `nullable` instead of a null type."""
    if isinstance(schema, list):
        return [openapi_30(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {key: openapi_30(value) for key, value in schema.items()}
    options = schema.get("anyOf", [])
    if {"type": "null"} in options:
        rest = [option for option in options if option != {"type": "null"}]
        schema.pop("anyOf")
        schema.update(rest[0] if len(rest) == 1 and "$ref" not in rest[0] else {"anyOf": rest})
        schema["nullable"] = True
    return schema


class Examples:
    """Request examples the service answers: the packaged sample's last bars, and the feature row they give."""

    def __init__(self, settings: Settings) -> None:
        from itff_platform.features.silver import build_features, feature_columns
        from itff_platform.market.sample import SAMPLE_INTERVAL, SampleCandleSource, sample_symbols
        from itff_platform.serving.online import minimum_candles

        self.settings, self.fewest = settings, minimum_candles(settings)
        source = settings.symbols[0] if settings.symbols[0] in sample_symbols() else sample_symbols()[0]
        frame = (
            SampleCandleSource()
            .fetch(source, SAMPLE_INTERVAL, datetime(2024, 1, 1, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC))
            .tail(800)
        )
        self.names = feature_columns(settings)
        self.row = {
            k: round(v, 6)
            for k, v in build_features(frame, settings).collect().select(self.names).row(-1, named=True).items()
        }
        self.candles = [
            {"timestamp": r[0].isoformat(), "open": r[1], "high": r[2], "low": r[3], "close": r[4], "volume": r[5]}
            for r in frame.tail(self.fewest).select("timestamp", "open", "high", "low", "close", "volume").iter_rows()
        ]

    def named(self) -> dict[str, Any]:
        """components.examples: request bodies, by name."""
        head = {"symbol": self.settings.symbols[0], "target": self.settings.training.targets[0]}
        last = self.candles[-1]
        alert = {
            "ticker": f"BINANCE:{head['symbol']}",
            "close": last["close"],
            "time": last["timestamp"],
            "target": head["target"],
            "candles": self.candles,
        }
        return {
            "features": {"summary": "a feature row", "value": {**head, "features": self.row}},
            "candles": {
                "summary": f"{self.fewest} candles: the fewest the features need (744 give a regime too)",
                "value": {**head, "candles": self.candles},
            },
            "rows": {
                "summary": "one row, values in the model's feature order",
                "value": {**head, "rows": [list(self.row.values())]},
            },
            "alert": {"summary": "an alert with the candles of its bar", "value": alert},
        }

    def features_schema(self) -> dict[str, Any]:
        number = {"type": "number"}
        return {
            "nullable": True,
            "default": None,
            "example": self.row,
            "description": "the model's features, by name, or as a list in this order: " + ", ".join(self.names),
            "anyOf": [
                {"type": "object", "properties": {name: number for name in self.names}, "additionalProperties": number},
                {"type": "array", "items": number, "minItems": len(self.names), "maxItems": len(self.names)},
            ],
        }
