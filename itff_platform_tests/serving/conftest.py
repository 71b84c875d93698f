"""A service over a registry where some models have a champion and some do not, shared by the tests of what a
client is told: the no-champion refusals and the OpenAPI document (Swagger's "Try it out")."""

import json

import pytest

import mlflow
from itff_platform.settings import Settings
from itff_platform.training.dataset import training_data
from itff_platform.training.promotion import promote_champion
from itff_platform.training.train import train_symbol_target
from itff_platform_tests.serving.test_service import ADMIN, TOKEN, start_service
from itff_platform_tests.training.test_promotion import learnable_silver, train


@pytest.fixture(scope="session")
def mixed_service(tmp_path_factory):
    """PROMOUSDT direction: a champion. NOISEUSDT direction: trained on coin flips, so promotion rejects it.
    Both level_up models: never trained. Yields (url, settings, the rejected decision)."""
    folder = tmp_path_factory.mktemp("mixed-registry")
    settings = Settings(home=folder, trials=1, wf_folds=3)
    mlflow.set_tracking_uri(settings.tracking_uri)
    train(settings, ["logistic"], noise=0.2)
    assert promote_champion(settings, "PROMOUSDT", "direction").promoted
    coin_flips = training_data(settings, "NOISEUSDT", "direction", silver=learnable_silver(settings, noise=0.5))
    train_symbol_target(
        settings,
        "NOISEUSDT",
        "direction",
        families=["baseline_majority", "baseline_persistence", "logistic"],
        data=coin_flips,
    )
    rejected = promote_champion(settings, "NOISEUSDT", "direction")
    assert not rejected.promoted and rejected.challenger is not None, rejected.reasons
    env = {
        "ITFF_API_TOKENS": json.dumps([TOKEN]),
        "ITFF_ADMIN_TOKEN": ADMIN,
        "ITFF_SERVE_WORKERS": "1",
        "ITFF_SYMBOLS": '["PROMOUSDT", "NOISEUSDT"]',
        "ITFF_TARGETS": '["direction", "level_up"]',
    }
    process, url, log_file = start_service(folder, env)
    yield url, settings, rejected
    process.terminate()
    process.wait(timeout=30)
    log_file.close()
