"""The studies' pruner: it acts at the default budget, after the first fold, on the same folds for every trial."""

import optuna
import pytest

from itff_platform.settings import Settings
from itff_platform.training.pruning import FoldMeanPruner, first_fold_leader, make_pruner, search_floor


def run_trials(pruner, fold_losses: list[list[float]], last_fold: int) -> list[str]:
    """Each trial reports its fold losses in order, stopping when pruned (never after the last fold, as the
    studies do); returns each trial's final state."""
    study = optuna.create_study(direction="minimize", pruner=pruner)
    for losses in fold_losses:
        trial = study.ask()
        state = optuna.trial.TrialState.COMPLETE
        for fold, loss in enumerate(losses):
            trial.report(loss, fold)
            if fold != last_fold and trial.should_prune():
                state = optuna.trial.TrialState.PRUNED
                break
        study.tell(trial, sum(losses) / len(losses) if state == optuna.trial.TrialState.COMPLETE else None, state)
    return [t.state.name for t in study.trials]


def test_the_default_pruner_can_stop_the_second_and_third_trial_after_their_first_fold():
    settings = Settings()
    pruner = make_pruner(settings.training.pruner, settings.training.pruner_startup_trials)
    # Three trials at the default budget, three search folds; the second and third are worse from the start.
    states = run_trials(pruner, [[0.60, 0.70, 0.65], [0.62, 0.72, 0.66], [0.61, 0.71, 0.70]], last_fold=2)
    assert states == ["COMPLETE", "PRUNED", "PRUNED"]


def test_a_better_trial_is_never_pruned():
    states = run_trials(FoldMeanPruner(1), [[0.60, 0.70, 0.65], [0.58, 0.69, 0.64], [0.57, 0.68, 0.60]], 2)
    assert states == ["COMPLETE", "COMPLETE", "COMPLETE"]


def test_folds_are_compared_with_the_same_folds_not_with_the_trials_easiest_fold():
    # Fold 0 is an easy period, fold 1 a hard one. The new trial beats the first on fold 0 but loses more on
    # fold 1: over the same folds its mean is worse. MedianPruner compares its best value (fold 0's 0.50) with the
    # first trial's fold-1 loss (0.70) and lets it run on.
    losses = [[0.55, 0.70, 0.65], [0.50, 0.80, 0.70]]
    assert run_trials(FoldMeanPruner(1), losses, 2) == ["COMPLETE", "PRUNED"]
    assert run_trials(optuna.pruners.MedianPruner(1, 0), losses, 2) == ["COMPLETE", "COMPLETE"]


@pytest.mark.parametrize("name", ["none", "median"])
def test_the_other_pruners_keep_the_second_trial(name):
    losses = [[0.60, 0.70, 0.65], [0.62, 0.72, 0.66], [0.61, 0.71, 0.70]]
    assert run_trials(make_pruner(name, 1), losses, 2)[:2] == ["COMPLETE", "COMPLETE"]


def test_the_search_floor_keeps_the_best_trial_whole_and_every_other_trial_to_its_first_fold():
    # Trial 1 is the best: it runs every fold; trials 0 and 2 would stop after fold 0 at best, saving the rest.
    fold_seconds = {0: [1.0, 2.0, 3.0], 1: [1.5, 2.5, 3.5], 2: [0.5]}  # trial 2 was pruned after fold 0
    assert search_floor(20.0, fold_seconds, best=1) == 20.0 - (2.0 + 3.0)
    assert search_floor(20.0, {1: [1.5, 2.5, 3.5]}, best=1) == 20.0  # one trial: nothing to prune


def test_the_first_fold_leader_is_the_trial_with_the_lowest_first_fold_loss():
    study = optuna.create_study()
    for losses in ([0.60, 0.70], [0.58, 0.80], [0.65]):  # trial 1 leads on fold 0; trial 0 has the best mean
        trial = study.ask()
        for fold, loss in enumerate(losses):
            trial.report(loss, fold)
        study.tell(trial, sum(losses) / len(losses))
    assert first_fold_leader(study.trials) == 1 != study.best_trial.number
