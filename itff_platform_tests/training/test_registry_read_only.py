"""Reading a model never writes into the registry's artifacts. Issue 9: promotion loaded "models:/..." without
dst_path, and on a local store MLflow then writes registered_model_meta into the model's own artifact folder,
so the files a manifest vouches for change under it."""

from datetime import timedelta

import numpy as np
import pytest

from itff_platform.contracts.champions import ChampionStore
from itff_platform.training import promotion
from itff_platform.training.promotion import artifact_manifest, promote_champion
from itff_platform_tests.serving.test_live_evaluation import lake_and_champion, trained_through
from itff_platform_tests.training.test_promotion import NAME


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    return lake_and_champion(tmp_path_factory.mktemp("read-only"))


def test_scoring_loading_and_verifying_a_champion_leave_its_artifacts_untouched(registry):
    settings, _silver, version = registry
    tree = settings.tracking.mlflow_dir / "artifacts"
    before = artifact_manifest(tree)
    # The champion scored on a later window through its pyfunc, as promotion does for a champion trained on older data.
    start = trained_through(settings, version) + timedelta(days=5)
    window = (start.isoformat()[:19], (start + timedelta(days=10)).isoformat()[:19])
    scored = promotion._score_on_window(settings, "PROMOUSDT", "direction", f"models:/{NAME}/{version}", window)
    assert scored is not None and scored.height > 200 and np.isfinite(scored["loss"].to_numpy()).all()
    store = ChampionStore(settings)
    assert store.refresh() and store.get("PROMOUSDT", "direction").version == version  # the service's load, verified
    promote_champion(settings, "PROMOUSDT", "direction")  # nothing newer: reads the registry only
    after = artifact_manifest(tree)
    assert sorted(set(after) - set(before)) == [] and sorted(set(before) - set(after)) == []
    assert [path for path in before if before[path] != after[path]] == []
