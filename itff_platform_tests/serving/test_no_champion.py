"""A model without a champion: its 400 and /readyz say why (promotion's recorded decision) and what to do."""

import httpx

from itff_platform_tests.serving.test_service import TOKEN, candle_window, feature_row, post


def test_a_prediction_for_a_rejected_model_says_why_and_what_to_do(mixed_service):
    url, settings, rejected = mixed_service
    force = f"itff promote --symbol NOISEUSDT --target direction --force {rejected.challenger}"
    for body in (
        {"symbol": "NOISEUSDT", "features": feature_row(settings)},
        {"symbol": "NOISEUSDT", "candles": candle_window()},
    ):
        answer = post(url, "/predict", body)
        assert answer.status_code == 400, answer.text
        refusal = answer.json()
        assert refusal["field"] == "symbol/target" and "NOISEUSDT direction has no champion" in refusal["error"]
        # The reason is the one promotion recorded in the registry, with the version it judged.
        assert refusal["reason"].startswith(f"promotion rejected v{rejected.challenger} at ")
        assert rejected.reasons[0] in refusal["reason"] and rejected.reasons[0] in refusal["error"]
        assert "itff train --symbol NOISEUSDT --target direction" in refusal["remedy"] and force in refusal["remedy"]
        assert refusal["remedy"] in refusal["error"]  # one line holds it all


def test_a_model_never_trained_says_so(mixed_service):
    url, settings, _ = mixed_service
    refusal = post(
        url, "/predict", {"symbol": "PROMOUSDT", "target": "level_up", "features": feature_row(settings)}
    ).json()
    assert refusal["reason"] == "no version is registered: it has not been trained"
    assert refusal["remedy"].startswith("to get one: train it (itff train --symbol PROMOUSDT --target level_up)")


def test_readyz_with_a_token_gives_each_model_without_a_champion_its_reason_and_remedy(mixed_service):
    url, _, rejected = mixed_service
    probe = httpx.get(f"{url}/readyz", timeout=10)  # Kubernetes' probe: no token, nothing listed
    assert probe.status_code == 200 and "itff-" not in probe.text
    details = httpx.get(f"{url}/readyz", headers={"X-API-Token": TOKEN}, timeout=30)
    assert details.status_code == 200, details.text
    models = details.json()["models"]
    assert models["itff-PROMOUSDT-direction"]["healthy"] and models["itff-PROMOUSDT-direction"]["remedy"] is None
    noise = models["itff-NOISEUSDT-direction"]
    assert not noise["healthy"] and noise["judged_version"] == rejected.challenger
    assert noise["reason"].startswith(f"promotion rejected v{rejected.challenger}") and "--force" in noise["remedy"]
    assert models["itff-NOISEUSDT-level_up"]["reason"] == "no version is registered: it has not been trained"
    assert httpx.get(f"{url}/readyz", headers={"X-API-Token": "guess"}, timeout=10).status_code == 401


def test_the_remedy_does_not_import_promotion_on_the_event_loop():
    """The first 400 for a rejected model imported training.promotion (mlflow, sklearn, optuna: ~1.4 s) inside the
    request, blocking the worker's event loop; the remedy is a string and needs none of it."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from itff_platform.contracts.champions import ChampionStore, ModelStatus, NO_CHAMPION\n"
        "from itff_platform.settings import Settings\n"
        "store = ChampionStore.__new__(ChampionStore)\n"
        "store.status = {'itff-BTCUSDT-direction': ModelStatus('itff-BTCUSDT-direction', problem=NO_CHAMPION,"
        " reason='rejected', judged_version='3')}\n"
        "print(store.remedy('BTCUSDT', 'direction'))\n"
        "assert 'itff_platform.training.promotion' not in sys.modules and 'mlflow' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "--force 3" in done.stdout
