"""A real MLflow SQLite store and registry: run structure, shared metric names, artifacts, pyfunc, tags."""

import json

import pandas as pd
import pytest

import mlflow
from itff_platform.features.silver import build_features
from itff_platform.market.synthetic import random_walk_candles
from itff_platform.rules import REGIMES
from itff_platform.settings import Settings
from itff_platform.training.dataset import training_data
from itff_platform.training.train import train_symbol_target
from mlflow import MlflowClient

FAMILIES = ["baseline_majority", "logistic", "lstm"]


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tracked")
    settings = Settings(
        home=folder, trials=2, torch_trials=2, torch_epochs=1, torch_max_train_rows=1500, sequence_length=8, wf_folds=3
    )
    silver = build_features(random_walk_candles(6000, seed=2), settings).collect()
    data = training_data(settings, "TESTUSDT", "direction", silver=silver)
    outcomes = train_symbol_target(settings, "TESTUSDT", "direction", families=FAMILIES, data=data)
    mlflow.set_tracking_uri(settings.tracking_uri)
    return settings, outcomes, data


def test_a_parent_run_per_study_and_a_child_run_per_trial(tracked):
    settings, outcomes, _ = tracked
    client = MlflowClient(settings.tracking_uri)
    experiment = client.get_experiment_by_name("itff-TESTUSDT-direction")
    assert experiment is not None and experiment.artifact_location.startswith(settings.artifact_location)
    for outcome in outcomes:
        children = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{outcome.run_id}'")
        expected = 1 if outcome.family.startswith("baseline") else 2
        assert len(children) == expected, outcome.family
        # A pruned trial (tagged, and finished: pruning is no failure) has the folds it ran, not a mean of them.
        pruned = [child for child in children if child.data.tags.get("state") == "pruned"]
        assert len(pruned) == outcome.trials_pruned
        assert all(child.info.status == "FINISHED" for child in children)
        assert all("mean_fold_loss" in child.data.metrics for child in children if child not in pruned)
        assert all("fold_loss" in child.data.metrics for child in children)
        assert all(child.data.params for child in children if not outcome.family.startswith("baseline"))


def test_each_study_logs_where_its_time_went(tracked):
    settings, outcomes, _ = tracked
    client = MlflowClient(settings.tracking_uri)
    for outcome in outcomes:
        metrics = client.get_run(outcome.run_id).data.metrics
        phases = {k.removesuffix("_seconds"): v for k, v in metrics.items() if k.endswith("_seconds")}
        total = phases.pop("study")
        expected = {"setup", "search", "holdout", "evaluation", "registration"}
        assert expected | ({"refit"} if outcome.model_version else set()) == set(phases), outcome.family
        assert sum(phases.values()) <= total <= sum(phases.values()) + 1.0
        assert outcome.phases == pytest.approx(phases) and outcome.seconds == pytest.approx(total)
        # CPU seconds for the same phases (a shared machine's load moves them less), and the search's floor:
        # what it would have cost had every trial but the best stopped after its first fold.
        assert outcome.cpu_phases is not None and set(outcome.cpu_phases) == set(phases) | {"study"}
        assert outcome.search_floor is not None and 0 < outcome.search_floor <= phases["search"]
        assert outcome.floor_keeps_best is not None


def test_every_family_reports_the_same_metric_names(tracked):
    settings, outcomes, _ = tracked
    client = MlflowClient(settings.tracking_uri)
    names = [set(client.get_run(o.run_id).data.metrics) for o in outcomes]
    core = {
        "log_loss",
        "roc_auc",
        "accuracy",
        "brier",
        "ece",
        "precision",
        "recall",
        "f1",
        "backtest_profit_factor",
        "backtest_sharpe",
        "backtest_max_drawdown",
        "backtest_trades",
        "backtest_hit_rate_trades",
        "backtest_buy_and_hold_return",
        "threshold",
        "trials_per_minute",
    }
    for family_names in names:
        assert core <= family_names
    assert all({"tradable_p_value", "recent_profit_factor", "fold1_trades"} <= family_names for family_names in names)
    # Trading figures per regime (and a profit factor at all) exist only where a family traded: compare the rest.
    regime_trading = {
        f"backtest_{k}_{r}"
        for k in ("profit_factor", "hit_rate_trades", "max_drawdown", "sharpe", "trades")
        for r in REGIMES
    }
    steady = [
        {n for n in family_names - regime_trading if not n.endswith(("_profit_factor", "hit_rate_trades"))}
        for family_names in names
    ]
    assert steady[0] <= steady[1]
    assert any(n.startswith("auc_") for n in names[1]) and any(n.startswith("hit_rate_") for n in names[1])


def test_artifacts_and_reproducibility_tags(tracked):
    settings, outcomes, _ = tracked
    client = MlflowClient(settings.tracking_uri)
    logistic = next(o for o in outcomes if o.family == "logistic")
    files = {a.path for a in client.list_artifacts(logistic.run_id, "evaluation")}
    assert {
        "evaluation/reliability.png",
        "evaluation/threshold_sweep.png",
        "evaluation/equity.png",
        "evaluation/folds.csv",
    } <= files
    tags = client.get_run(logistic.run_id).data.tags
    assert tags["family"] == "logistic" and tags["seed"] == str(settings.training.seed)


def test_refit_models_are_registered_with_family_and_headline_metrics(tracked):
    settings, _outcomes, _ = tracked
    client = MlflowClient(settings.tracking_uri)
    versions = client.search_model_versions("name = 'itff-TESTUSDT-direction'")
    assert sorted(v.tags["family"] for v in versions) == ["logistic", "lstm"]  # baselines are not registered
    for version in versions:
        assert {"log_loss", "roc_auc", "ece", "threshold"} <= set(version.tags)


def test_the_registered_pyfunc_predicts_from_feature_rows(tracked):
    _settings, outcomes, data = tracked
    for outcome in outcomes:
        if outcome.model_version is None:
            continue
        model = mlflow.pyfunc.load_model(f"models:/itff-TESTUSDT-direction/{outcome.model_version}")
        rows = pd.DataFrame(data.x[-50:], columns=data.features).assign(regime=data.regimes[-50:].astype(str))
        out = model.predict(rows)
        assert list(out.columns[:6]) == ["prob_up", "confidence", "threshold", "allow", "signal", "regime"]
        assert out["prob_up"].between(0, 1).all() and set(out["signal"]) <= {"long", "short", "flat"}
        assert model.metadata.signature is not None
        with pytest.raises(mlflow.exceptions.MlflowException, match=r"missing inputs \['rsi'\]"):
            model.predict(rows.drop(columns="rsi"))  # the signature names the missing feature
        if outcome.family == "lstm":
            spread = model.predict(rows, params={"uncertainty": True})["uncertainty"]
            assert (spread > 0).any()
            # The first context_rows rows have no real history behind them, and say so.
            assert out["warm"].tolist() == [False] * 7 + [True] * 43
        else:
            assert out["warm"].all()


def test_each_study_logs_the_silver_table_it_trained_on_as_a_dataset(tracked):
    settings, outcomes, data = tracked
    client = MlflowClient(settings.tracking_uri)
    for outcome in outcomes:
        (logged,) = client.get_run(outcome.run_id).inputs.dataset_inputs
        assert logged.dataset.name == "silver-TESTUSDT-direction" and logged.dataset.source_type == "delta_table"
        assert json.loads(logged.dataset.source)["path"] == str(settings.lake.root / "silver" / "features")
        assert json.loads(logged.dataset.profile)["num_rows"] == len(data)
        tags = {t.key: t.value for t in logged.tags}
        assert tags["mlflow.data.context"] == "training" and tags["rows"] == str(len(data))


def test_families_compare_on_the_same_params_and_the_same_artifact_names(tracked):
    settings, outcomes, _ = tracked
    client = MlflowClient(settings.tracking_uri)
    runs = {o.family: client.get_run(o.run_id) for o in outcomes}
    shared = {"family", "symbol", "target", "task", "trials", "seed", "folds", "rows", "features", "class_weight"}
    for family, run in runs.items():
        params = run.data.params
        assert shared <= set(params) and params["family"] == family
        # Hyperparameters live under the family's name, never bare.
        assert all(
            k in shared | {"search_folds", "wf_mode", "embargo_bars", "label_horizon", "fees_bps"}
            or k.startswith(f"{family}.")
            for k in params
        ), family
        root = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"reliability.png", "threshold_sweep.png", "equity.png"} <= root, family
    assert "lstm.hidden" in runs["lstm"].data.params and "logistic.C" in runs["logistic"].data.params


def test_experiments_open_in_the_model_training_view_with_a_summary_per_study(tracked):
    settings, outcomes, _ = tracked
    client = MlflowClient(settings.tracking_uri)
    experiment = client.get_experiment_by_name("itff-TESTUSDT-direction")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    for outcome in outcomes:
        summary = client.get_run(outcome.run_id).data.tags["mlflow.note.content"]
        assert summary.startswith(
            f"**{outcome.family}** on TESTUSDT direction: log_loss {outcome.metrics['log_loss']:.4f}"
        )
        registered = f"registered as version {outcome.model_version}" if outcome.model_version else "not registered ("
        assert registered in summary


def test_an_experiment_made_before_the_kind_tag_gets_it(tmp_path):
    from itff_platform.training.study import experiment_id

    settings = Settings(home=tmp_path)
    old = MlflowClient(settings.tracking_uri).create_experiment("itff-OLDUSDT-direction")
    assert experiment_id(settings, "OLDUSDT", "direction") == old
    assert (
        MlflowClient(settings.tracking_uri).get_experiment(old).tags["mlflow.experimentKind"]
        == "custom_model_development"
    )


def test_trials_run_in_parallel_threads_are_nested_under_their_study(tmp_path):
    settings = Settings(home=tmp_path, trials=2, study_jobs=2, wf_folds=3, pruner="none")
    silver = build_features(random_walk_candles(3000, seed=3), settings).collect()
    data = training_data(settings, "TESTUSDT", "direction", silver=silver)
    (outcome,) = train_symbol_target(settings, "TESTUSDT", "direction", families=["logistic"], data=data)
    client = MlflowClient(settings.tracking_uri)
    children = client.search_runs(
        [client.get_run(outcome.run_id).info.experiment_id], f"tags.`mlflow.parentRunId` = '{outcome.run_id}'"
    )
    assert len(children) == 2 and outcome.trials_completed == 2
