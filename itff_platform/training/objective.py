"""A study's trial: one configuration scored out of sample on the search folds, as a nested MLflow run under the
study's parent run. The same objective runs in the study's own process and in its worker processes
(training.worker), which is why it names its parent run by id instead of relying on an active run."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna

import mlflow
from itff_platform.models import make_forecaster
from itff_platform.models.registry import FamilySpec
from itff_platform.settings import Settings
from itff_platform.training.dataset import TrainingData
from itff_platform.training.evaluation import out_of_sample
from itff_platform.training.metrics import row_losses
from itff_platform.training.pruning import FoldMeanPruner, RowLosses, make_pruner
from itff_platform.training.splits import Fold
from itff_platform.training.threads import trial_threads

Predictions = tuple[np.ndarray, list[float], np.ndarray]  # out-of-sample predictions, fold losses, uncalibrated
PREDICTIONS_ARTIFACT = "search_predictions.npz"  # a trial's predictions in a study with workers (log_predictions)
WORKER_PID = "worker_pid"  # trial user attrs: the process that ran the trial, and its MLflow run
TRIAL_RUN = "mlflow_run_id"
FOLD_SECONDS = "fold_seconds"  # trial user attr: wall seconds of each fold the trial ran (training.pruning's floor)


@dataclass
class Search:
    """What the hyperparameter search found: the Optuna study, and each trial's out-of-sample predictions
    (those run in this process; a worker's are read from its trial's MLflow run when needed)."""

    study: optuna.Study
    predictions: dict[int, Predictions] = field(default_factory=dict)

    @property
    def completed(self) -> int:
        return sum(t.state == optuna.trial.TrialState.COMPLETE for t in self.study.trials)

    @property
    def pruned(self) -> int:
        return sum(t.state == optuna.trial.TrialState.PRUNED for t in self.study.trials)

    def of(self, trial: optuna.trial.FrozenTrial) -> Predictions:
        """A completed trial's search-fold predictions, from this process or from the worker's MLflow run."""
        if trial.number in self.predictions:
            return self.predictions[trial.number]
        return logged_predictions(trial)


def logged_predictions(trial: optuna.trial.FrozenTrial) -> Predictions:
    """The search-fold predictions a worker's completed trial logged to its MLflow run (`log_predictions`)."""
    with tempfile.TemporaryDirectory() as scratch:
        path = mlflow.artifacts.download_artifacts(
            run_id=trial.user_attrs[TRIAL_RUN], artifact_path=PREDICTIONS_ARTIFACT, dst_path=scratch
        )
        with np.load(path) as saved:
            return saved["prediction"], [float(v) for v in saved["losses"]], saved["uncalibrated"]


def logged_row_losses(
    data: TrainingData, search_folds: list[Fold]
) -> Callable[[optuna.trial.FrozenTrial], RowLosses | None]:
    """A completed trial's per-row losses on each search fold, from the predictions its process logged: how the
    pruner of one process tests a trial against a leader another process ran (training.worker). None for a trial
    that logged none (one from this process, whose rows the pruner already has, or a failed download)."""

    def load(trial: optuna.trial.FrozenTrial) -> RowLosses | None:
        if TRIAL_RUN not in trial.user_attrs:
            return None
        try:
            prediction = logged_predictions(trial)[0]
        except Exception:
            return None
        rows, start = {}, 0
        for fold in search_folds:
            rows[fold.number] = row_losses(data.task, data.y[fold.test], prediction[start : start + len(fold.test)])
            start += len(fold.test)
        return rows

    return load


def log_predictions(predictions: Predictions) -> None:
    """A completed trial of a study with workers keeps its predictions on its MLflow run, in every process (the
    study's own too): the study's process reads a worker's best trial there, and each process's pruner the rows
    of a leader another process ran (logged_row_losses)."""
    prediction, losses, uncalibrated = predictions
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / PREDICTIONS_ARTIFACT
        np.savez(path, prediction=prediction, losses=np.asarray(losses), uncalibrated=uncalibrated)
        mlflow.log_artifact(str(path))


@dataclass(frozen=True)
class Trials:
    """What every trial of one study needs, in whichever process it runs."""

    data: TrainingData
    family_spec: FamilySpec
    search_folds: list[Fold]
    settings: Settings
    n_trials: int
    experiment: str
    parent_run_id: str
    threads: int  # the OpenMP threads of each trial (training.threads)


def open_study(
    name: str, storage: str | optuna.storages.BaseStorage, settings: Settings, seed: int, new: bool = True
) -> optuna.Study:
    """The study `name`, created (`new`) or joined, with the settings' pruner and a TPE sampler seeded `seed`."""
    sampler = optuna.samplers.TPESampler(seed=seed)
    training = settings.training
    pruner = make_pruner(
        training.pruner, training.pruner_startup_trials, training.pruner_alpha, settings.features.label_horizon
    )
    if new:
        return optuna.create_study(
            study_name=name, storage=storage, direction="minimize", sampler=sampler, pruner=pruner
        )
    return optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)


def make_objective(
    trials: Trials, progress: Callable[[str], None], keep: Callable[[int, Predictions], None]
) -> Callable[[optuna.Trial], float]:
    """The objective: the mean fold loss of a nested MLflow run per trial; `keep(number, predictions)` is called,
    inside that run, for every completed trial. The trial records which process ran it (`worker_pid`)."""
    data, family_spec, search_folds, settings = trials.data, trials.family_spec, trials.search_folds, trials.settings
    fixed = family_spec.fixed_params(data.features)
    family, cls = family_spec.name, family_spec.forecaster_class()
    last_fold = search_folds[-1].number
    load = logged_row_losses(data, search_folds)

    def objective(trial: optuna.Trial) -> float:
        pruner = trial.study.pruner if isinstance(trial.study.pruner, FoldMeanPruner) else None
        if pruner is not None:
            pruner.load = load  # the rows of leaders that other processes ran
        params = {**cls.search_space(trial), **fixed}
        weighting = (
            trial.suggest_categorical("class_weight", ["balanced", "none"])
            if data.task == "classification" and not family_spec.baseline
            else "none"
        )
        trial_started = time.perf_counter()
        # A nested run does not inherit its parent's experiment; without it trials land in "Default".
        with mlflow.start_run(
            experiment_id=trials.experiment,
            run_name=f"trial-{trial.number}",
            nested=True,
            parent_run_id=trials.parent_run_id,
        ) as run:
            # Its run first: a trial known by its process always names its run (a dead worker's is ended, KILLED).
            # A retried trial carries the dead worker's attrs: both overwritten.
            trial.set_user_attr(TRIAL_RUN, run.info.run_id)
            trial.set_user_attr(WORKER_PID, os.getpid())
            mlflow.log_params({**params, "class_weight": weighting})

            fold_seconds: list[float] = []
            fold_started = time.perf_counter()

            def on_fold(number: int, loss: float, rows: np.ndarray) -> None:
                nonlocal fold_started
                fold_seconds.append(time.perf_counter() - fold_started)
                trial.set_user_attr(FOLD_SECONDS, fold_seconds)
                mlflow.log_metric("fold_loss", loss, step=number)
                if pruner is not None:
                    pruner.record(trial.number, number, rows)
                trial.report(loss, number)
                # Pruning after the last search fold would save nothing and lose a finished trial.
                prune = number != last_fold and trial.should_prune()
                tested = _tested(pruner, trial.number, number)
                if prune:
                    raise optuna.TrialPruned(f"fold {number} loss {loss:.4f}{tested}")
                fold_started = time.perf_counter()

            try:
                with trial_threads(trials.threads):  # this thread's own: study_jobs trials run in a thread pool
                    predictions = out_of_sample(
                        lambda: make_forecaster(family, params, settings), data, search_folds, weighting, on_fold
                    )
            except optuna.TrialPruned as pruned:
                # Ended as FINISHED and tagged, not FAILED: a pruned trial is the search working, not an error.
                mlflow.set_tag("state", "pruned")
                stopped: optuna.TrialPruned | None = pruned
            else:
                stopped = None
                mean_loss = float(np.mean(predictions[1]))
                mlflow.log_metric("mean_fold_loss", mean_loss)
                keep(trial.number, predictions)
        head = f"[{data.symbol} {data.target} {family}] trial {trial.number + 1}/{trials.n_trials}"
        tail = f"in {time.perf_counter() - trial_started:.1f}s {params | {'class_weight': weighting}}"
        if stopped is not None:
            progress(f"{head}: pruned after {stopped} {tail}")
            raise stopped
        progress(f"{head}: loss {mean_loss:.5f} {tail}")
        return mean_loss

    return objective


def _tested(pruner: FoldMeanPruner | None, number: int, fold: int) -> str:
    """The pruner's test of trial `number` after `fold`, if it made one (the trial was behind the leader), logged
    on the trial's run as `prune_p_value` at that step and described for the progress line."""
    if pruner is None or number not in pruner.tests or pruner.tests[number][0] != fold:
        return ""
    _, leader, test = pruner.tests[number]
    mlflow.log_metric("prune_p_value", test.p_value, step=fold)
    # Numbered from 1, as the progress lines number trials.
    return f", worse than trial {leader + 1} by {test.mean_gain:.4f} per row (p={test.p_value:.3g})"
