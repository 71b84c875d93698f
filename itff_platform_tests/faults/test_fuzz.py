"""Schemathesis against the real service's own /docs.json: no request, valid or not, gets a 5xx.

The schema is the one the service publishes, sharpened so the generated requests reach the models: the served
symbols and targets, the real feature names (as a dict, or a list of the right length), bar times the lake holds,
TradingView tickers with and without an exchange prefix. Each operation is fuzzed in schemathesis' positive
mode (valid by the schema) and negative mode (violating it). The bounded run below is part of `make test`;
`make fuzz` (ITFF_FUZZ_CASES=5000) runs the long one and prints its figures."""

import contextlib
import math
import os
import time
from collections import Counter

import httpx
import pytest

from itff_platform.features.silver import feature_columns
from itff_platform.rules import REGIMES
from itff_platform_tests.faults.conftest import ADMIN, TOKEN, serve

BOUNDED_CASES = 300
FULL_CASES = int(os.environ.get("ITFF_FUZZ_CASES", "0"))


@pytest.fixture(scope="module")
def fuzzed(lake):
    folder, settings, silver = lake
    process, url, log_file = serve(
        folder, ITFF_SERVE_WORKERS="1", ITFF_TRADINGVIEW_STALE="flag", ITFF_PREDICTION_LOG_FLUSH_S="1"
    )
    yield url, settings, silver
    process.terminate()
    process.wait(timeout=60)
    log_file.close()


def sharpened(raw: dict, settings, silver) -> dict:
    """The published schema, with the values that matter named: schemathesis then spends its cases on the models'
    inputs instead of on unknown symbols."""
    # The fuzz sends the right token itself: with the token scheme declared, schemathesis would send tokens of its
    # own, and their 401s would spend the address's failed-authentication budget (429 for the rest of the run).
    raw["components"].pop("securitySchemes", None)
    for item in raw["paths"].values():
        for operation in item.values():
            operation.pop("security", None)
    names = feature_columns(settings)
    times = [
        t.strftime("%Y-%m-%dT%H:%M:%SZ")
        for t in silver["timestamp"].gather([0, 400, silver.height // 2, silver.height - 1])
    ]
    times += [
        "0001-01-01T00:00:00",
        "9999-12-31T23:00:00Z",
        "2024-09-06T23:00:00+14:00",
        "2024-02-30T00:00:00Z",
    ]  # edges
    number = {"type": "number"}
    features = {
        "anyOf": [
            {
                "type": "object",
                "properties": {n: number for n in names},
                "required": names,
                "additionalProperties": False,
            },
            {"type": "array", "items": number, "minItems": len(names), "maxItems": len(names)},
        ]
    }

    def body(path: str) -> dict:  # BentoML inlines each endpoint's input schema in its path
        return raw["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["properties"]

    few_candles = {
        "anyOf": [{"type": "array", "items": {"$ref": "#/components/schemas/Candle"}, "maxItems": 5}, {"type": "null"}]
    }
    for path in ("/predict", "/consensus"):
        raw["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]["required"] = [
            "symbol",
            "features",
        ]
        props = body(path)
        props["symbol"] = {"type": "string", "enum": settings.symbols}
        props["target"] = {"type": "string", "enum": settings.training.targets}
        props["features"] = features
        props["bar_time"] = {"anyOf": [{"type": "string", "enum": times}, {"type": "null"}]}
        props["candles"] = few_candles
        if "regime" in props:
            props["regime"] = {"anyOf": [{"type": "string", "enum": REGIMES}, {"type": "null"}]}
    batch = body("/predict_batch")
    batch["symbol"] = {"type": "string", "enum": settings.symbols}
    batch["target"] = {"type": "string", "enum": settings.training.targets}
    batch["rows"] = {
        "type": "array",
        "maxItems": 8,
        "items": {"type": "array", "items": number, "minItems": len(names), "maxItems": len(names)},
    }
    alert = body("/tradingview")
    alert["ticker"] = {
        "type": "string",
        "enum": ["BINANCE:PROMOUSDT", "PROMOUSDT", "BYBIT:PROMOUSDT.P", "PROMOUSDTPERP"],
    }
    alert["time"] = {"type": "string", "enum": times}
    alert["candles"] = few_candles
    return raw


def fuzz(url: str, raw: dict, cases: int) -> tuple[Counter, list[str]]:
    """Run about `cases` requests, split over the operations and both modes; (status counts, 5xx examples)."""
    import schemathesis
    from hypothesis import HealthCheck, Phase, Verbosity, given
    from hypothesis import settings as hypothesis_settings
    from hypothesis.errors import Unsatisfiable

    schema = schemathesis.openapi.from_dict(raw)
    operations = [result.ok() for result in schema.get_all_operations()]
    fuzzed_operations = [op for op in operations if op.method.upper() == "POST"]
    per_run = max(1, math.ceil(cases / (2 * len(fuzzed_operations))))
    statuses: Counter = Counter()
    failures: list[str] = []
    for operation in operations:
        token = ADMIN if operation.path.startswith("/admin/") else TOKEN
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @hypothesis_settings(
                max_examples=per_run if operation in fuzzed_operations else 3,
                deadline=None,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                print_blob=False,
                verbosity=Verbosity.quiet,
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case):
                response = case.call(base_url=url, headers={"X-API-Token": token}, timeout=60)
                statuses[(operation.method.upper(), operation.path, response.status_code)] += 1
                if response.status_code >= 500:
                    failures.append(
                        f"{operation.method.upper()} {operation.path} {mode}: {response.status_code} "
                        f"for {str(case.body)[:300]} -> {response.text[:200]}"
                    )

            with contextlib.suppress(
                Unsatisfiable
            ):  # nothing to violate: a GET without parameters has no negative cases
                run()
    return statuses, failures


def report(statuses: Counter, seconds: float) -> str:
    total = sum(statuses.values())
    by_code = Counter()
    for (_, _, code), n in statuses.items():
        by_code[code] += n
    server_errors = sum(n for code, n in by_code.items() if code >= 500)
    return f"{total} cases in {seconds:.0f} s, {server_errors} x 5xx; by status {dict(sorted(by_code.items()))}"


def run_and_check(fuzzed, cases: int) -> Counter:
    url, settings, silver = fuzzed
    raw = sharpened(httpx.get(f"{url}/docs.json", timeout=30).json(), settings, silver)
    started = time.time()
    statuses, failures = fuzz(url, raw, cases)
    print("\nschemathesis:", report(statuses, time.time() - started))
    assert not failures, "\n".join(failures[:20])
    return statuses


@pytest.mark.timeout(600)
def test_a_bounded_fuzz_of_every_operation_gets_no_5xx(fuzzed):
    statuses = run_and_check(fuzzed, BOUNDED_CASES)
    assert sum(statuses.values()) >= BOUNDED_CASES * 0.8
    # The sharpened schema reaches the models: some requests of each prediction endpoint are answered.
    answered = {path for (_, path, code) in statuses if code == 200}
    assert {"/predict", "/predict_batch", "/consensus"} <= answered, statuses


@pytest.mark.skipif(not FULL_CASES, reason="the long run: make fuzz (ITFF_FUZZ_CASES=5000)")
@pytest.mark.timeout(3600)
def test_full_fuzz(fuzzed):
    statuses = run_and_check(fuzzed, FULL_CASES)
    assert sum(statuses.values()) >= FULL_CASES * 0.8
