"""The OpenAPI document at /docs.json, and Swagger (at /) driven by headless Chromium: Authorize, Try it out, 200."""

import json
import shutil
import subprocess
import time

import httpx
import pytest

from itff_platform.serving.openapi import Answer, BatchAnswer, ConsensusAnswer, Readiness, Refusal
from itff_platform_tests.conftest import free_port
from itff_platform_tests.serving.test_service import TOKEN


@pytest.fixture(scope="module")
def document(mixed_service):
    url, settings, _ = mixed_service
    return url, settings, httpx.get(f"{url}/docs.json", timeout=60).json()


def test_the_document_declares_the_token_scheme_on_the_endpoints_that_need_it(document):
    _, _, doc = document
    assert doc["components"]["securitySchemes"]["ApiToken"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Token",
        "description": "one of ITFF_API_TOKENS",
    }
    for path in ("/predict", "/predict_batch", "/consensus"):
        assert doc["paths"][path]["post"]["security"] == [{"ApiToken": []}], path
    assert doc["paths"]["/admin/reload"]["post"]["security"] == [{"AdminToken": []}]
    assert {"ApiToken": []} in doc["paths"]["/tradingview"]["post"]["security"]
    assert {} in doc["paths"]["/readyz"]["get"]["security"]  # optional: without a token it is the bare probe
    # GET only: no POST twins of BentoML's probes.
    assert set(doc["paths"]["/healthz"]) == {"get"} and set(doc["paths"]["/readyz"]) == {"get"}


def test_the_request_schemas_have_enums_feature_names_and_examples(document):
    _, settings, doc = document
    body = doc["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    properties = body["schema"]["properties"]
    assert properties["symbol"]["enum"] == ["PROMOUSDT", "NOISEUSDT"] and properties["target"]["enum"] == [
        "direction",
        "level_up",
    ]
    from itff_platform.features.silver import feature_columns

    by_name = properties["features"]["anyOf"][0]["properties"]
    assert list(by_name) == feature_columns(settings) and properties["features"]["anyOf"][1]["type"] == "array"
    assert set(body["examples"]) == {"features", "candles"}
    examples = doc["components"]["examples"]
    assert list(examples["features"]["value"]["features"]) == feature_columns(settings)
    assert len(examples["candles"]["value"]["candles"]) == 360 and examples["candles"]["value"]["symbol"] == "PROMOUSDT"
    assert set(doc["components"]["schemas"]["Candle"]["example"]) == {
        "timestamp",
        "open",
        "high",
        "low",
        "close",
        "volume",
    }


def test_the_examples_are_answered_and_every_answer_matches_its_typed_model(document):
    """The examples get a 200 with the token in the declared header, and the answers hold exactly the documented
    fields (the models forbid extra ones), so the typed schemas cannot drift from what is served."""
    url, _, doc = document
    examples = doc["components"]["examples"]
    header = {doc["components"]["securitySchemes"]["ApiToken"]["name"]: TOKEN}
    assert doc["paths"]["/predict"]["post"]["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Answer"
    }
    assert "prob_up" in doc["components"]["schemas"]["Answer"]["properties"]
    for path, name, model in [
        ("/predict", "features", Answer),
        ("/predict", "candles", Answer),
        ("/predict_batch", "rows", BatchAnswer),
        ("/consensus", "features", ConsensusAnswer),
    ]:
        answer = httpx.post(f"{url}{path}", json=examples[name]["value"], headers=header, timeout=60)
        assert answer.status_code == 200, (path, name, answer.text)
        model.model_validate(answer.json())
    Readiness.model_validate(httpx.get(f"{url}/readyz", headers=header, timeout=30).json())
    refused = httpx.post(
        f"{url}/predict", json={**examples["features"]["value"], "symbol": "NOISEUSDT"}, headers=header, timeout=30
    )
    assert refused.status_code == 400 and Refusal.model_validate(refused.json()).remedy


@pytest.mark.timeout(240)
def test_swagger_authorize_then_try_it_out_on_predict_gets_a_200(mixed_service, tmp_path):
    url, _, _ = mixed_service
    with Chromium(tmp_path) as page:
        page.open(f"{url}/")
        page.wait_for("document.querySelectorAll('.opblock-post').length >= 4")
        page.run("document.querySelector('.btn.authorize').click()")
        page.wait_for("document.querySelector('.auth-container input') !== null")
        # Swagger's inputs are React's: set the value through the native setter, then announce it.
        page.run(f"""{{
            const box = [...document.querySelectorAll('.auth-container')].find(c => c.textContent.includes('ApiToken'));
            const input = box.querySelector('input');
            Object.getOwnPropertyDescriptor(HTMLInputElement.prototype, 'value').set.call(input, {json.dumps(TOKEN)});
            input.dispatchEvent(new Event('input', {{bubbles: true}}));
            [...box.querySelectorAll('button')].find(b => b.textContent.trim() === 'Authorize').click(); }}""")
        page.wait_for("[...document.querySelectorAll('.auth-container')].some(c => c.textContent.includes('Logout'))")
        page.run("document.querySelector('.modal-ux .close-modal').click()")
        predict = (
            "[...document.querySelectorAll('.opblock-post')]"
            ".find(b => b.querySelector('.opblock-summary-path').textContent.trim() === '/predict')"
        )
        page.run(f"{predict}.querySelector('.opblock-summary-control').click()")
        page.wait_for(f"{predict}.querySelector('.try-out__btn') !== null")
        page.run(f"{predict}.querySelector('.try-out__btn').click()")
        page.wait_for(f"{predict}.querySelector('.btn.execute') !== null")
        page.run(f"{predict}.querySelector('.btn.execute').click()")
        page.wait_for(f"{predict}.querySelector('.live-responses-table tr.response .response-col_status') !== null")
        status = page.run(
            f"{predict}.querySelector('.live-responses-table tr.response .response-col_status').textContent.trim()"
        )
        curl = page.run(f"{predict}.querySelector('.curl-command').textContent")
        answer = page.run(f"{predict}.querySelector('.live-responses-table .response-col_description pre').textContent")
    assert status == "200", answer
    assert f"X-API-Token: {TOKEN}" in curl  # sent the way the document declares
    assert Answer.model_validate(json.loads(answer)).symbol == "PROMOUSDT"


class Chromium:
    """Headless Chromium on a DevTools port, driven over its WebSocket: open a page, run JavaScript, wait."""

    def __init__(self, folder) -> None:
        self.folder, self.port, self._id = folder, free_port(), 0

    def __enter__(self):
        binary = shutil.which("chromium")
        if binary is None:
            pytest.fail(
                "chromium is not on PATH: `make test` installs it (Makefile target `browser`, Debian package chromium)"
            )
        self.process = subprocess.Popen(
            [
                binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--window-size=1600,1000",
                f"--remote-debugging-port={self.port}",
                f"--user-data-dir={self.folder / 'profile'}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        from websockets.sync.client import connect

        self.socket = connect(self._page_socket(), max_size=None, open_timeout=30)
        self.call("Network.enable")
        self.call(
            "Network.setBlockedURLs", urls=["*googletagmanager.com*"]
        )  # BentoML's page tags itself; no network here
        return self

    def __exit__(self, *exc) -> None:
        self.socket.close()
        self.process.terminate()
        self.process.wait(timeout=30)

    def _page_socket(self) -> str:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                pages = httpx.get(f"http://127.0.0.1:{self.port}/json/list", timeout=2).json()
                return next(p["webSocketDebuggerUrl"] for p in pages if p["type"] == "page")
            except (httpx.HTTPError, StopIteration, ValueError):
                time.sleep(0.3)
        pytest.fail("chromium did not open its DevTools port")

    def call(self, method: str, **params) -> dict:
        self._id += 1
        self.socket.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == self._id:
                assert "error" not in message, message
                return message["result"]

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def run(self, script: str):
        result = self.call("Runtime.evaluate", expression=script, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"].get("value")

    def wait_for(self, condition: str, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if self.run(f"(() => {{ try {{ return Boolean({condition}); }} catch (e) {{ return false; }} }})()"):
                    return
            except AssertionError:
                pass
            time.sleep(0.25)
        pytest.fail(f"the page never satisfied: {condition}")
