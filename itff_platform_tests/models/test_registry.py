"""The model-family registry: each family declared once, in its own module; settings and training ask it."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

import itff_platform.models.families as family_modules
from itff_platform.models import registry
from itff_platform.models.registry import families, names, spec
from itff_platform.settings import Settings

RECIPE = Path(__file__).parents[2] / "docs" / "extend-model-family.md"


def test_every_family_declares_what_its_class_is():
    for name, family in families().items():
        cls = family.forecaster_class()
        assert cls.family == name and cls.task == family.task, name
        assert family.uncertainty == (
            "bands" if family.task == "regression" else "mc_dropout" if family.torch else "none"
        ), name


def test_the_baselines_and_budgets_come_from_the_registry():
    from itff_platform.training.study import study_trials
    from itff_platform.training.train import families_for

    settings = Settings(trials=3, torch_trials=2)
    assert families_for("direction", settings) == [
        "baseline_majority",
        "baseline_persistence",
        *settings.training.families,
    ]
    assert families_for("forward_return", settings) == ["baseline_climatology", *settings.training.regression_families]
    assert [study_trials(f, settings) for f in ("baseline_majority", "logistic", "lstm")] == [1, 3, 2]
    assert spec("baseline_persistence").fixed_params(["close", "log_return_1"]) == {"last_return_column": 1}


def test_settings_accept_only_registered_families_of_the_right_task():
    with pytest.raises(ValidationError, match="families: \\['forest'\\] not among the registered classification"):
        Settings(families=["logistic", "forest"])
    with pytest.raises(ValidationError, match="regression_families"):
        Settings(regression_families=["logistic"])
    with pytest.raises(ValidationError, match="baseline_majority"):  # a baseline is trained anyway, never chosen
        Settings(families=["baseline_majority"])


def test_reading_the_registry_imports_neither_torch_nor_scikit_learn():
    probe = (
        "import sys\nfrom itff_platform.settings import Settings\nSettings()\n"
        "from itff_platform.models.registry import families\nassert len(families()) >= 10\n"
        "assert 'torch' not in sys.modules and 'sklearn' not in sys.modules, sorted(sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.fixture
def scratch_family(tmp_path, monkeypatch):
    """The recipe's code block as a module of the families package, from a scratch folder on the package's path
    (no file of the repository is touched); the registry is restored afterwards."""
    code = re.search(r"```python\n(.*?)```", RECIPE.read_text(), re.S).group(1)
    (tmp_path / "shrunk_rate.py").write_text(code)
    monkeypatch.setattr(family_modules, "__path__", [*family_modules.__path__, str(tmp_path)])
    monkeypatch.setattr(registry, "_REGISTERED", dict(registry._REGISTERED))
    registry.rediscover()
    yield "shrunk_rate"
    sys.modules.pop(f"{family_modules.__name__}.shrunk_rate", None)
    registry.rediscover()


def test_the_recipe_adds_a_family_with_one_file(scratch_family, tmp_path):
    from itff_platform.features.silver import build_features
    from itff_platform.market.synthetic import random_walk_candles
    from itff_platform.models import load_forecaster
    from itff_platform.training.dataset import training_data
    from itff_platform.training.train import train_symbol_target

    assert scratch_family in names("classification", baseline=False)
    settings = Settings(home=tmp_path / "home", families=["logistic", scratch_family], trials=2, wf_folds=3)
    silver = build_features(random_walk_candles(4000, seed=5), settings).collect()
    data = training_data(settings, "TESTUSDT", "direction", silver=silver)
    [outcome] = train_symbol_target(settings, "TESTUSDT", "direction", families=[scratch_family], data=data)
    assert outcome.trials_completed + outcome.trials_pruned == 2 and "log_loss" in outcome.metrics
    assert outcome.model_version == "1", outcome.metrics  # a constant rate is calibrated: registered

    import mlflow

    mlflow.set_tracking_uri(settings.tracking_uri)
    folder = Path(
        mlflow.artifacts.download_artifacts("models:/itff-TESTUSDT-direction/1", dst_path=str(tmp_path / "m"))
    )
    model = load_forecaster(folder / "artifacts" / "forecaster")
    assert model.family == scratch_family
    prob = model.predict_proba(data.x[-5:])
    assert np.allclose(prob, prob[0]) and 0 < prob[0] < 1
