"""Promotion against a real MLflow registry: baselines first, then champion vs challenger, rollback, integrity."""

import time

import numpy as np
import polars as pl
import pytest

import mlflow
from itff_platform.contracts.champions import ChampionStore
from itff_platform.features.silver import build_features
from itff_platform.market.synthetic import random_walk_candles
from itff_platform.settings import Settings
from itff_platform.training.dataset import training_data
from itff_platform.training.promotion import promote_champion, rollback_champion
from itff_platform.training.train import train_symbol_target
from itff_platform_tests.conftest import model_files
from mlflow import MlflowClient

NAME = "itff-PROMOUSDT-direction"


def learnable_silver(settings: Settings, noise: float, seed: int = 0) -> pl.DataFrame:
    """Random-walk features with a label drawn from P(up) = sigmoid(k (RSI - 50) / 10), and returns to match.
    A smooth probability (not a step) that a model can learn calibrated; `noise` sets k, so that RSI 60 means
    P(up) = (1 - noise)^2 / ((1 - noise)^2 + noise^2): lower noise, a sharper signal."""
    silver = build_features(random_walk_candles(5000, seed=3), settings).collect()
    rng = np.random.default_rng(seed)
    strength = 2 * np.log((1 - noise) / noise)
    up = 1 / (1 + np.exp(-strength * (silver["rsi"].fill_null(50).to_numpy() - 50) / 10))
    label = (rng.uniform(size=silver.height) < up).astype(np.int8)
    return silver.with_columns(
        pl.Series("direction", label), pl.Series("forward_return", np.where(label == 1, 0.01, -0.01))
    )


def train(settings: Settings, families: list[str], noise: float) -> None:
    data = training_data(settings, "PROMOUSDT", "direction", silver=learnable_silver(settings, noise))
    train_symbol_target(
        settings, "PROMOUSDT", "direction", families=["baseline_majority", "baseline_persistence", *families], data=data
    )


def served(settings: Settings) -> ChampionStore:
    """A fresh ChampionStore, as the service starts, after one refresh of this test's model."""
    store = ChampionStore(settings.model_copy(update={"symbols": ["PROMOUSDT"], "targets": ["direction"]}))
    store.refresh()
    return store


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    folder = tmp_path_factory.mktemp("promotion")
    settings = Settings(home=folder, trials=1, wf_folds=3)
    mlflow.set_tracking_uri(settings.tracking_uri)
    return settings, MlflowClient(settings.tracking_uri)


def test_the_first_version_is_promoted_only_if_it_beats_the_baselines(registry):
    settings, client = registry
    train(settings, ["logistic"], noise=0.2)
    decision = promote_champion(settings, "PROMOUSDT", "direction")
    assert decision.promoted and decision.compared_with.startswith("baseline_")
    assert any("significantly beats the better baseline" in reason for reason in decision.reasons)
    assert float(client.get_model_version(NAME, decision.challenger).tags["promotion_p_value_vs_baseline"]) < 0.05
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == decision.challenger
    tags = client.get_model_version(NAME, decision.challenger).tags
    assert tags["promotion_decision"] == "promoted" and len(tags["manifest_sha256"]) == 64
    store = served(settings)  # the service's load: downloaded and checked against the manifest promotion recorded
    assert store.status[NAME].healthy and store.status[NAME].serving_version == decision.challenger, store.report()


def test_a_challenger_that_does_not_beat_the_champion_is_recorded_and_rejected(registry):
    settings, client = registry
    champion = str(client.get_model_version_by_alias(NAME, "champion").version)
    train(settings, ["lorentzian"], noise=0.45)  # nearly noise: worse than the champion
    decision = promote_champion(settings, "PROMOUSDT", "direction")
    assert not decision.promoted and decision.champion_before == champion
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == champion
    tags = client.get_model_version(NAME, decision.challenger).tags
    assert (
        tags["promotion_decision"] == "rejected" and "does not significantly beat champion" in tags["promotion_reasons"]
    )


def test_a_better_challenger_takes_over_and_rollback_restores_the_previous_champion(registry):
    settings, client = registry
    before = str(client.get_model_version_by_alias(NAME, "champion").version)
    train(settings, ["logistic"], noise=0.05)
    decision = promote_champion(settings, "PROMOUSDT", "direction")
    assert decision.promoted and decision.compared_with == f"v{before}", decision.reasons
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == decision.challenger

    assert rollback_champion(settings, "PROMOUSDT", "direction") == (decision.challenger, before)
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == before
    again = promote_champion(settings, "PROMOUSDT", "direction")  # the version rolled back from is not re-promoted
    assert (
        again.challenger != decision.challenger
        and str(client.get_model_version_by_alias(NAME, "champion").version) == before
    )
    with pytest.raises(LookupError, match="no previous champion"):
        rollback_champion(settings, "PROMOUSDT", "direction")


def test_a_tampered_model_fails_verification_naming_the_file(registry):
    settings, client = registry
    version = client.get_model_version_by_alias(NAME, "champion")
    target = model_files(client, NAME, version.version) / "artifacts" / "forecaster" / "state.pkl"
    assert target.exists()
    target.write_bytes(target.read_bytes() + b"tampered")
    status = served(settings).status[NAME]
    assert not status.healthy and status.refused_versions == [str(version.version)]
    assert status.problem == f"v{version.version} refused: artifacts/forecaster/state.pkl: sha256 differs"


def test_a_champion_whose_run_kept_no_holdout_rows_is_kept_with_a_reason():
    """Same window, but the champion's run logged no out-of-sample rows: the decision keeps it and says why
    (the reason list held None before, and the registry tag and the CLI printed 'None')."""
    from itff_platform.training.promotion import Candidate, _champion_holdout_losses

    class NoRows:
        def losses(self, run_id: str, holdout: bool = False) -> None:
            return None

    window = {"recent_window_start": "2024-01-01", "recent_window_end": "2024-03-01"}
    holder = Candidate("3", "run-3", "logistic", {}, window)
    challenger = Candidate("4", "run-4", "lorentzian", {}, window)
    settings = Settings()
    losses, reason = _champion_holdout_losses(
        None,  # type: ignore[arg-type]  # the same-window path asks the registry nothing
        NoRows(),  # type: ignore[arg-type]
        settings,
        "PROMOUSDT",
        "direction",
        NAME,
        holder,
        challenger,
    )
    assert losses is None and reason == "champion v3's run kept no out-of-sample rows on this window: kept as it is"


def test_two_concurrent_promotions_of_one_model_both_land_in_the_history(registry, monkeypatch):
    """Two researchers force two versions of one model at the same moment. Each reads the champion history,
    appends its version and writes it back: unserialized, both read the same history and the later write dropped
    the earlier entry (the sleep, in this process's history read only, makes that interleaving certain). Under
    the model's lock the second waits, then sees the first's champion and appends after it."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from itff_platform.training import promotion

    settings, client = registry
    champion = str(client.get_model_version_by_alias(NAME, "champion").version)
    first, second = [
        str(v.version) for v in client.search_model_versions(f"name = '{NAME}'") if str(v.version) != champion
    ][:2]
    before = promotion._history(client, NAME)
    read = promotion._history

    def slow_history(*args):
        found = read(*args)
        time.sleep(1.0)  # both threads hold a stale history at once, unless the lock keeps the second out
        return found

    monkeypatch.setattr(promotion, "_history", slow_history)
    start = threading.Barrier(2)

    def force(version: str) -> promotion.Decision:
        start.wait()
        return promotion.force_champion(settings, "PROMOUSDT", "direction", version)

    with ThreadPoolExecutor(2) as pool:
        decisions = list(pool.map(force, [first, second]))
    history = read(client, NAME)
    assert history[: len(before)] == before and sorted(history[len(before) :]) == sorted([first, second]), history
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == history[-1]
    later = next(d for d in decisions if d.challenger == history[-1])
    assert later.champion_before == history[-2]  # the later decision saw the earlier one's champion


def test_with_no_champion_and_every_version_rolled_back_promotion_says_to_retrain(registry):
    """An operator removed the champion alias after rollbacks: promotion has nothing to judge. It crashed
    (None.version) before; now it answers, and keeps nothing."""
    settings, client = registry
    client.delete_registered_model_alias(NAME, "champion")
    for version in client.search_model_versions(f"name = '{NAME}'"):
        client.set_model_version_tag(NAME, version.version, "rolled_back_at", "2026-01-01T00:00:00+00:00")
    decision = promote_champion(settings, "PROMOUSDT", "direction")
    assert not decision.promoted and decision.champion_before is None and decision.unchanged
    assert decision.reasons == ["no champion, and every registered version was rolled back from: retrain to get one"]
