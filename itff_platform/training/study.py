"""One Optuna study per (symbol, target, family), tracked in MLflow: a parent run for the study, a child run per
trial, then the best configuration refit on every row and registered as `itff-{symbol}-{target}`."""

from __future__ import annotations

import json
import logging
import math
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
import pandas as pd
import polars as pl

import mlflow
from itff_platform.models import make_forecaster
from itff_platform.models.registry import FamilySpec, spec
from itff_platform.rules import registered_name
from itff_platform.settings import Settings
from itff_platform.training.dataset import TrainingData
from itff_platform.training.evaluation import Evaluation, evaluate, out_of_sample, sample_weights
from itff_platform.training.objective import FOLD_SECONDS, Search, Trials, make_objective, open_study
from itff_platform.training.pruning import first_fold_leader, search_floor
from itff_platform.training.splits import Fold
from itff_platform.training.threads import study_threads, threads_per_trial
from itff_platform.training.timing import PhaseClock
from itff_platform.training.tracking import quiet_mlflow
from itff_platform.training.worker import Workers, local_workers, search_with_workers

if TYPE_CHECKING:
    from mlflow.data.dataset import Dataset

log = logging.getLogger(__name__)
FINGERPRINT_TAG = "study_fingerprint"  # what the study depends on (training.reuse); equal means reusable
# Metrics a float would change (counts) or MLflow drops (NaN, inf), as JSON: a reused study (training.reuse) then
# reports exactly what this one did (2268 trades, not 2268.0; a profit factor of inf, not a missing one).
EXACT_METRICS_TAG = "metrics_exact"
HEADLINE = {
    "classification": ["log_loss", "roc_auc", "ece", "backtest_profit_factor"],
    "regression": ["mae", "mape", "band_coverage"],
}


@dataclass(frozen=True)
class StudyOutcome:
    family: str
    run_id: str
    metrics: dict[str, float]
    params: dict[str, Any]
    model_version: str | None
    trials_completed: int
    trials_pruned: int
    seconds: float
    figures: dict[str, Path]
    tradable: bool = False
    tradable_reason: str = ""
    fold_table: pl.DataFrame | None = None
    regime_table: pl.DataFrame | None = None
    reused: bool = False  # read back from an earlier run with the same fingerprint (training.reuse), not trained
    phases: dict[str, float] | None = None  # seconds per phase (training.timing): where the study's time went
    cpu_phases: dict[str, float] | None = None  # this process's CPU seconds per phase (not a worker process's)
    search_floor: float | None = None  # the search's seconds had all but the best trial stopped after fold 0
    floor_keeps_best: bool | None = None  # the best trial led on fold 0: a first-fold screen would have kept it

    @property
    def trials_per_minute(self) -> float:
        # The figure logged to MLflow, so a reused study reports exactly what its run did.
        logged = self.metrics.get("trials_per_minute")
        return (
            logged
            if logged is not None
            else (self.trials_completed + self.trials_pruned) / max(self.seconds, 1e-9) * 60
        )


# MLflow 3 opens an experiment by its kind; untagged, it may guess GenAI and open on an empty traces page.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def experiment_id(settings: Settings, symbol: str, target: str) -> str:
    mlflow.set_tracking_uri(settings.tracking_uri)
    name = registered_name(symbol, target)
    found = mlflow.get_experiment_by_name(name)
    if found is None:
        root = settings.artifact_location
        return mlflow.create_experiment(
            name, artifact_location=f"{root}/{name}" if root else None, tags=EXPERIMENT_KIND
        )
    for key, value in EXPERIMENT_KIND.items():  # experiments created before the tag existed
        if found.tags.get(key) != value:
            mlflow.MlflowClient(settings.tracking_uri).set_experiment_tag(found.experiment_id, key, value)
    return found.experiment_id


def run_summary(
    family: str, data: TrainingData, metrics: dict[str, float], registered: str | None, refused: str | None
) -> str:
    """The parent run's description: its headline figures in one line, readable in the runs table and run page."""
    figures = ", ".join(
        f"{k} {metrics[k]:.4f}" for k in HEADLINE[data.task] if k in metrics and math.isfinite(metrics[k])
    )
    outcome = f"registered as version {registered}" if registered else f"not registered ({refused or 'baseline'})"
    return f"**{family}** on {data.symbol} {data.target}: {figures}; {outcome}."


def _clean(metrics: dict[str, float]) -> dict[str, float]:
    """MLflow refuses NaN/inf in some stores; drop what is undefined rather than log a lie."""
    return {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(float(v))}


def _not_float(metrics: dict[str, Any]) -> dict[str, Any]:
    counts = {k: int(v) for k, v in metrics.items() if isinstance(v, (int, np.integer)) and not isinstance(v, bool)}
    return {**counts, **{k: float(v) for k, v in metrics.items() if k not in _clean(metrics)}}


def log_training_dataset(data: TrainingData, settings: Settings) -> None:
    """Record on the active run what it trained on: the silver Delta table (path and version) and the rows taken
    from it, so MLflow's Datasets column names the table, its version and its row count instead of "None"."""
    from mlflow.data.delta_dataset_source import DeltaDatasetSource
    from mlflow.data.pandas_dataset import from_pandas

    from itff_platform.lake.layers import LakeTables

    version = data.table_versions.get("silver")
    # Every family of a symbol x target trains on the same rows: digest and profile them once (~1 s), not per study.
    key = (data.symbol, data.target, version, len(data), str(data.timestamps[-1]))
    if key not in _DATASETS:
        frame = pd.DataFrame(data.x, columns=data.features).assign(target=data.y)
        with warnings.catch_warnings():  # the integer-label schema hint is about model inputs, not a dataset record
            warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
            _DATASETS.clear()
            _DATASETS[key] = from_pandas(
                frame,
                source=DeltaDatasetSource(path=LakeTables.under(settings).silver, delta_table_version=version),
                name=f"silver-{data.symbol}-{data.target}",
                targets="target",
            )
    mlflow.log_input(
        _DATASETS[key],
        context="training",
        tags={
            "delta_table": "silver",
            "delta_version": str(version),
            "rows": str(len(data)),
            "symbol": data.symbol,
            "target": data.target,
        },
    )


_DATASETS: dict[tuple[Any, ...], Dataset] = {}  # the last symbol x target's dataset record, reused by its other studies


def study_trials(family: str, settings: Settings, n_trials: int | None = None) -> int:
    """The trials a study of `family` runs: one for a baseline (nothing to search), else the budget for its kind."""
    budget = spec(family).trials_setting
    if budget is None:
        return 1
    return n_trials or getattr(settings.training, budget)  # trials or torch_trials


def figure_path(settings: Settings, data: TrainingData, family: str, name: str) -> Path:
    """Where a study's figure is kept for Dagster's metadata once its scratch folder is gone."""
    return settings.tracking.mlflow_dir / "figures" / f"{data.symbol}-{data.target}-{family}-{name}.png"


def run_study(
    data: TrainingData,
    family: str,
    folds: list[Fold],
    settings: Settings,
    progress: Callable[[str], None] = log.info,
    n_trials: int | None = None,
    fingerprint: str | None = None,
    parallel_runs: int = 1,
) -> StudyOutcome:
    """Search, score the best trial on the holdout, evaluate, register (unless refused) and keep the figures.
    `fingerprint` (training.reuse) is tagged on the parent run, so a later study with the same one reuses it.
    `parallel_runs`: training runs that may run beside this one, which share the cores (training.threads)."""
    quiet_mlflow()
    family_spec = spec(family)
    threads = threads_per_trial(settings, parallel_runs)
    with study_threads(threads, family_spec.torch):
        return _run_study(
            data, family_spec, folds, settings, progress, study_trials(family, settings, n_trials), fingerprint, threads
        )


def _run_study(
    data: TrainingData,
    family_spec: FamilySpec,
    folds: list[Fold],
    settings: Settings,
    progress: Callable[[str], None],
    n_trials: int,
    fingerprint: str | None,
    threads: int,
) -> StudyOutcome:
    family = family_spec.name
    clock = PhaseClock(default="setup")  # the experiment, the parent run and worker processes: setup
    fixed = family_spec.fixed_params(data.features)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    study_name = f"{registered_name(data.symbol, data.target)}-{family}-{stamp}"
    # The last fold is a holdout: the search never scores on it, so the figures reported for it (the recent_*
    # metrics promotion relies on) carry no selection bias from the hyperparameter search.
    search_folds, holdout = folds[:-1], folds[-1:]

    experiment = experiment_id(settings, data.symbol, data.target)
    # Worker processes (study_workers) start first: their imports overlap this process's setup.
    with (
        local_workers(settings, study_name, n_trials, threads, progress) as workers,
        mlflow.start_run(experiment_id=experiment, run_name=f"{family}-{stamp}") as parent,
    ):
        with clock.phase("setup"):
            _log_study_inputs(data, family, folds, settings, n_trials, fingerprint)
        with clock.phase("search"):
            trials = Trials(
                data, family_spec, search_folds, settings, n_trials, experiment, parent.info.run_id, threads
            )
            search = _search(trials, study_name, progress, workers)
        best = search.study.best_trial  # a completed trial: a pruned one never scored every search fold
        params = {k: v for k, v in best.params.items() if k != "class_weight"} | fixed
        weighting = best.params.get("class_weight", "none")
        with clock.phase("holdout"):
            prediction, losses, uncalibrated = _with_holdout(
                data, family, params, weighting, search.of(best), holdout, settings
            )
        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(scratch)
            with clock.phase("evaluation"):
                evaluation = evaluate(
                    data, folds, prediction, losses, settings, family, folder / "evaluation", uncalibrated
                )
                metrics = {
                    **evaluation.metrics,
                    "trials_completed": search.completed,
                    "trials_pruned": search.pruned,
                    "best_search_loss": search.study.best_value,  # the objective the pruner's savings must not move
                    # Trials over the search's own time: the refit and registration do not depend on the budget.
                    "trials_per_minute": (search.completed + search.pruned) / clock.seconds["search"] * 60,
                }
                _log_evaluation(family, metrics, evaluation, params, weighting, folder)
            with clock.phase("registration"):
                version = _register_unless_refused(
                    data, family_spec, params, weighting, evaluation, settings, folder, metrics, progress, clock
                )
                figures = _keep_figures(settings, data, family, evaluation)
        timing = clock.metrics()  # after registration, so study_seconds is the whole study
        mlflow.log_metrics(timing)
    return StudyOutcome(
        family,
        parent.info.run_id,
        metrics | timing,
        best.params,
        version,
        search.completed,
        search.pruned,
        timing["study_seconds"],
        figures,
        evaluation.tradable,
        evaluation.tradable_reason,
        evaluation.fold_table,
        evaluation.regime_table,
        phases=dict(clock.seconds),
        cpu_phases={**clock.cpu_seconds, "study": clock.cpu_total},
        search_floor=search_floor(
            clock.seconds["search"],
            {t.number: t.user_attrs[FOLD_SECONDS] for t in search.study.trials if FOLD_SECONDS in t.user_attrs},
            best.number,
            settings.training.study_jobs * (1 if workers is None else len(workers.processes) + 1),
        ),
        floor_keeps_best=first_fold_leader(search.study.trials) == best.number,
    )


def _log_study_inputs(
    data: TrainingData, family: str, folds: list[Fold], settings: Settings, n_trials: int, fingerprint: str | None
) -> None:
    """The parent run's tags, params and dataset: what the study trains on, and with which budget."""
    mlflow.set_tags(
        {
            "family": family,
            "symbol": data.symbol,
            "target": data.target,
            "task": data.task,
            "seed": settings.training.seed,
            **{f"delta_version.{k}": v for k, v in data.table_versions.items()},
            **({FINGERPRINT_TAG: fingerprint} if fingerprint else {}),
        }
    )
    # The same keys on every family's parent run, so MLflow's compare view lines the families up row by row.
    mlflow.log_params(
        {
            "family": family,
            "symbol": data.symbol,
            "target": data.target,
            "task": data.task,
            "trials": n_trials,
            "seed": settings.training.seed,
        }
    )
    mlflow.log_params(
        {
            "folds": len(folds),
            "search_folds": len(folds) - 1,
            "wf_mode": settings.training.wf_mode,
            "embargo_bars": settings.training.wf_embargo_bars,
            "label_horizon": settings.features.label_horizon,
            "fees_bps": settings.trading.fees_bps,
            "rows": len(data),
            "features": len(data.features),
        }
    )
    log_training_dataset(data, settings)


def _search(trials: Trials, study_name: str, progress: Callable[[str], None], workers: Workers | None) -> Search:
    """The Optuna search over the family's space, a nested MLflow run per trial, scored on the search folds only.
    With `study_jobs` above 1 trials run in threads, each with its own MLflow run stack: the parent is named.
    With `study_workers` above 1 they run in worker processes that join the study (training.worker)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # before create_study, which logs at INFO
    if workers is not None:
        return search_with_workers(workers, trials, progress)
    settings = trials.settings
    search = Search(open_study(study_name, settings.study_storage, settings, settings.training.seed))
    search.study.optimize(
        make_objective(trials, progress, search.predictions.__setitem__),
        n_trials=trials.n_trials,
        n_jobs=settings.training.study_jobs,
        timeout=settings.training.study_timeout_s,
        show_progress_bar=settings.training.progress_bar,
    )
    return search


def _with_holdout(
    data: TrainingData,
    family: str,
    params: dict[str, Any],
    weighting: str,
    searched: tuple[np.ndarray, list[float], np.ndarray],
    holdout: list[Fold],
    settings: Settings,
) -> tuple[np.ndarray, list[float], np.ndarray]:
    """The best trial's search-fold predictions followed by the same configuration's predictions on the holdout."""
    searched_prediction, search_losses, searched_raw = searched
    held_out, holdout_losses, held_out_raw = out_of_sample(
        lambda: make_forecaster(family, params, settings), data, holdout, weighting
    )
    return (
        np.concatenate([searched_prediction, held_out]),
        [*search_losses, *holdout_losses],
        np.concatenate([searched_raw, held_out_raw]),
    )


def _log_evaluation(
    family: str, metrics: dict[str, Any], evaluation: Evaluation, params: dict[str, Any], weighting: str, folder: Path
) -> None:
    mlflow.log_metrics(_clean(metrics))
    mlflow.set_tag(EXACT_METRICS_TAG, json.dumps(_not_float(metrics)))
    mlflow.set_tags(
        {
            **evaluation.recent_window,
            "tradable": str(evaluation.tradable).lower(),
            "tradable_reason": evaluation.tradable_reason[:5000],
        }
    )
    # Hyperparameters differ per family: namespaced by family, so a name shared by two families (dropout)
    # never reads as one comparable column; the class weighting is common to all and stays plain.
    mlflow.log_params({"class_weight": weighting, **{f"{family}.{k}": v for k, v in params.items()}})
    mlflow.log_artifacts(str(folder / "evaluation"), artifact_path="evaluation")
    # The figures again at the artifact root under fixed names (reliability.png, threshold_sweep.png,
    # equity.png, quantile_bands.png): the same path on every family's run is what "compare" sets side by side.
    for path in evaluation.figures.values():
        mlflow.log_artifact(str(path))


def _register_unless_refused(
    data: TrainingData,
    family_spec: FamilySpec,
    params: dict[str, Any],
    weighting: str,
    evaluation: Evaluation,
    settings: Settings,
    folder: Path,
    metrics: dict[str, float],
    progress: Callable[[str], None],
    clock: PhaseClock,
) -> str | None:
    """The registered version, or None for a baseline or a model registration refuses (tagged with why)."""
    family = family_spec.name
    refused = None if family_spec.baseline else registration_refusal(metrics, settings)
    if refused:
        mlflow.set_tag("not_registered", refused)
        progress(f"[{data.symbol} {data.target} {family}] not registered: {refused}")
    version = (
        None
        if family_spec.baseline or refused
        else _refit_and_register(data, family, params, weighting, evaluation, settings, folder, metrics, clock)
    )
    mlflow.set_tag("mlflow.note.content", run_summary(family, data, metrics, version, refused))
    return version


def _keep_figures(settings: Settings, data: TrainingData, family: str, evaluation: Evaluation) -> dict[str, Path]:
    """Copies of the evaluation's figures for Dagster's metadata, kept after the scratch folder goes."""
    figures = {}
    for name, path in evaluation.figures.items():
        figures[name] = figure_path(settings, data, family, name)
        figures[name].parent.mkdir(parents=True, exist_ok=True)
        figures[name].write_bytes(path.read_bytes())
    return figures


def registration_refusal(metrics: dict[str, float], settings: Settings) -> str | None:
    """Why a study's model must not enter the registry, or None: a probability model whose walk-forward ECE is
    above `max_ece` would serve probabilities that do not mean what they say."""
    ece = metrics.get("ece")
    if ece is not None and ece > settings.promotion.max_ece:
        return f"walk-forward ECE {ece:.4f} > max_ece {settings.promotion.max_ece}"
    return None


def _refit_and_register(
    data: TrainingData,
    family: str,
    params: dict[str, Any],
    weighting: str,
    evaluation: Evaluation,
    settings: Settings,
    folder: Path,
    metrics: dict[str, float],
    clock: PhaseClock,
) -> str:
    from mlflow.models import infer_signature

    from itff_platform.training import pyfunc
    from itff_platform.training.pyfunc import ItffForecastModel
    from itff_platform.training.voting import record_for_voting
    from mlflow import MlflowClient

    every_row = np.arange(len(data))
    with clock.phase("refit"):
        model = make_forecaster(family, params, settings).fit(
            data.x, data.y, sample_weights(data, every_row, weighting)
        )
    saved = folder / "forecaster"
    model.save(saved)
    meta = {
        "family": family,
        "symbol": data.symbol,
        "target": data.target,
        "task": data.task,
        "features": data.features,
        "threshold": evaluation.threshold,
        "label_horizon": settings.features.label_horizon,
        "tradable": evaluation.tradable,
        "tradable_reason": evaluation.tradable_reason,
        "interval": settings.interval,
        "trained_through": str(data.timestamps[-1]),
        "table_versions": data.table_versions,
        "params": params,
        "context_rows": model.context_rows,
        "class_weight": weighting,
    }
    (saved / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
    mlflow.set_tag("trained_through", str(data.timestamps[-1])[:19])
    example = pd.DataFrame(data.x[-5:], columns=data.features).assign(regime=data.regimes[-5:].astype(str))
    loaded = ItffForecastModel()
    loaded.meta, loaded.forecaster = meta, model
    # Declaring the param lets callers ask for MC-dropout uncertainty through the pyfunc.
    signature = infer_signature(example, loaded.predict(None, example), params={"uncertainty": False})
    name = registered_name(data.symbol, data.target)
    info = mlflow.pyfunc.log_model(
        name="model",
        python_model=pyfunc.__file__,
        artifacts={"forecaster": str(saved)},
        signature=signature,
        input_example=example,
        registered_model_name=name,
        pip_requirements=["itff-platform"],
    )
    version = str(info.registered_model_version)
    client = MlflowClient()
    tags = {
        "family": family,
        "complexity": str(model.complexity),
        "threshold": f"{evaluation.threshold:.2f}",
        "tradable": str(evaluation.tradable).lower(),
        **{k: f"{metrics[k]:.5f}" for k in HEADLINE[data.task] if k in metrics},
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    # Its validation, skill and manifest: what lets it vote in /consensus without having been champion.
    record_for_voting(client, name, version, data.task, metrics, evaluation.recent_window)
    return version
