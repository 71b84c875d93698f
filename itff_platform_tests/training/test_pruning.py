"""The studies' pruner: it acts at the default budget, after the first fold, on the same folds for every trial."""

import numpy as np
import optuna
import pytest

from itff_platform.settings import Settings
from itff_platform.training.pruning import FoldMeanPruner, first_fold_leader, make_pruner, search_floor

ROWS = 500  # rows of each test fold
ROW_NOISE = np.random.default_rng(0).normal(0, 0.3, size=(3, ROWS))  # how hard each row is: shared by all trials


def fold_rows(loss: float, fold: int, trial: int, noise: float = 0.01) -> np.ndarray:
    """Per-row losses of one trial on one fold with mean exactly `loss`: the rows' shared difficulty (the same rows
    for every trial) plus the trial's own noise of standard deviation `noise`."""
    own = np.random.default_rng(100 * trial + fold).normal(0, noise, ROWS)
    rows = ROW_NOISE[fold] + own
    return loss + rows - rows.mean()


def run_trials(
    pruner, fold_losses: list[list[float]], last_fold: int, noise: float = 0.01, rows: bool = True
) -> list[str]:
    """Each trial reports its fold losses in order, and to the pruner its per-row losses (as the objective does),
    stopping when pruned (never after the last fold, as the studies do); returns each trial's final state."""
    study = optuna.create_study(direction="minimize", pruner=pruner)
    for losses in fold_losses:
        trial = study.ask()
        state = optuna.trial.TrialState.COMPLETE
        for fold, loss in enumerate(losses):
            if rows and hasattr(pruner, "record"):
                pruner.record(trial.number, fold, fold_rows(loss, fold, trial.number, noise))
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


def test_a_trial_worse_on_fold_0_by_less_than_the_noise_runs_on():
    # As Lorentzian's on the sample: the trial best over all folds is a little worse on fold 0 (here 0.0016) than
    # the first trial, and the bare difference stopped it. With per-row noise of 0.05 over 500 rows that gap gives p = 0.28.
    losses = [[0.6925, 0.6940, 0.6945], [0.6941, 0.6915, 0.6919]]
    assert run_trials(FoldMeanPruner(1), losses, 2, noise=0.05) == ["COMPLETE", "COMPLETE"]


def test_a_trial_clearly_worse_on_fold_0_is_still_pruned_at_the_same_noise():
    losses = [[0.6925, 0.6940, 0.6945], [0.7225, 0.6915, 0.6919]]  # 0.03 worse: t = 11
    assert run_trials(FoldMeanPruner(1), losses, 2, noise=0.05) == ["COMPLETE", "PRUNED"]


def test_a_stricter_significance_level_prunes_less():
    losses = [[0.6925, 0.6940, 0.6945], [0.6985, 0.6915, 0.6919]]  # 0.006 worse: p = 0.013
    assert run_trials(FoldMeanPruner(1, alpha=0.05), losses, 2, noise=0.05) == ["COMPLETE", "PRUNED"]
    assert run_trials(FoldMeanPruner(1, alpha=0.001), losses, 2, noise=0.05) == ["COMPLETE", "COMPLETE"]


def test_without_per_row_losses_there_is_no_test_and_no_pruning():
    losses = [[0.60, 0.70, 0.65], [0.90, 0.90, 0.90]]
    assert run_trials(FoldMeanPruner(1), losses, 2, rows=False) == ["COMPLETE", "COMPLETE"]


def test_a_leader_run_by_another_process_is_tested_on_the_rows_its_predictions_give():
    # A worker's pruner never saw the leader's folds: it reads them through `load` (the objective's reader of the
    # predictions the other process logged) and tests on them.
    leader = [fold_rows(loss, fold, 0) for fold, loss in enumerate([0.60, 0.70, 0.65])]
    asked = []

    def load(trial):
        asked.append(trial.number)
        return dict(enumerate(leader))

    pruner = FoldMeanPruner(1)
    pruner.load = load
    study = optuna.create_study(direction="minimize", pruner=pruner)
    first = study.ask()
    for fold, rows in enumerate(leader):
        first.report(float(rows.mean()), fold)
    study.tell(first, 0.65)
    second = study.ask()
    pruner.record(second.number, 0, fold_rows(0.62, 0, 1))
    second.report(0.62, 0)
    assert second.should_prune() and asked == [0]
    assert pruner.tests[1][:2] == (0, 0) and pruner.tests[1][2].p_value < 0.05  # after fold 0, against trial 0


def test_a_leader_whose_rows_cannot_be_loaded_is_asked_for_once():
    # A failed download (a leader that logged nothing) is not retried on every fold of every later trial.
    asked = []

    def load(trial):
        asked.append(trial.number)

    pruner = FoldMeanPruner(1)
    pruner.load = load
    study = optuna.create_study(direction="minimize", pruner=pruner)
    leader = study.ask()
    for fold, loss in enumerate([0.60, 0.70, 0.65]):
        leader.report(loss, fold)
    study.tell(leader, 0.65)
    for number in (1, 2):
        trial = study.ask()
        for fold, loss in enumerate([0.62, 0.72]):
            pruner.record(number, fold, fold_rows(loss, fold, number))
            trial.report(loss, fold)
            assert not trial.should_prune()  # no rows for the leader: no test
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    assert asked == [0]


def test_the_pruner_keeps_rows_only_of_trials_that_can_still_lead():
    # float64 per row, per fold, per trial: a pruned or failed trial never leads, nor does one beaten on every fold.
    pruner = FoldMeanPruner(1)
    study = optuna.create_study(direction="minimize", pruner=pruner)

    def run(losses, state=None):
        trial = study.ask()
        for fold, loss in enumerate(losses):
            pruner.record(trial.number, fold, fold_rows(loss, fold, trial.number))
            trial.report(loss, fold)
            if trial.should_prune():
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                return
        if state is not None:
            study.tell(trial, float(np.mean(losses)) if state == optuna.trial.TrialState.COMPLETE else None, state)

    def kept():
        return {number for number, _ in pruner.rows}

    run([0.60, 0.70, 0.65], optuna.trial.TrialState.COMPLETE)
    run([0.58], optuna.trial.TrialState.FAIL)  # ahead on fold 0, then an error
    run([0.62])  # pruned after fold 0
    assert [t.state.name for t in study.trials] == ["COMPLETE", "FAIL", "PRUNED"]
    assert kept() == {0}
    run([0.59, 0.69, 0.64], optuna.trial.TrialState.COMPLETE)  # ahead of trial 0 on every fold
    run([0.58])  # still running
    assert kept() == {3, 4}


def test_a_workers_leader_rows_are_its_logged_predictions_scored_fold_by_fold(monkeypatch):
    from itff_platform.training import objective
    from itff_platform.training.dataset import TrainingData
    from itff_platform.training.metrics import row_losses
    from itff_platform.training.splits import Fold

    y = np.array([0, 1, 1, 0, 1, 0, 0, 1])
    folds = [Fold(0, np.arange(2), np.arange(2, 5)), Fold(1, np.arange(5), np.arange(5, 8))]
    data = TrainingData("X", "direction", ["f"], np.zeros((8, 1)), y, *[np.zeros(8)] * 4, {})
    prediction = np.array([0.2, 0.7, 0.4, 0.9, 0.5, 0.3])  # fold 0's three test rows, then fold 1's
    monkeypatch.setattr(objective, "logged_predictions", lambda trial: (prediction, [], prediction))
    trial = optuna.trial.create_trial(value=0.5, user_attrs={objective.TRIAL_RUN: "run"})
    rows = objective.logged_row_losses(data, folds)(trial)
    np.testing.assert_array_equal(rows[0], row_losses("classification", y[2:5], prediction[:3]))
    np.testing.assert_array_equal(rows[1], row_losses("classification", y[5:8], prediction[3:]))
    assert objective.logged_row_losses(data, folds)(optuna.trial.create_trial(value=0.5)) is None


@pytest.mark.parametrize("name", ["none", "median"])
def test_the_other_pruners_keep_the_second_trial(name):
    losses = [[0.60, 0.70, 0.65], [0.62, 0.72, 0.66], [0.61, 0.71, 0.70]]
    assert run_trials(make_pruner(name, 1), losses, 2)[:2] == ["COMPLETE", "COMPLETE"]


def test_the_search_floor_keeps_the_best_trial_whole_and_every_other_trial_to_its_first_fold():
    # Trial 1 is the best: it runs every fold; trials 0 and 2 would stop after fold 0 at best, saving the rest.
    fold_seconds = {0: [1.0, 2.0, 3.0], 1: [1.5, 2.5, 3.5], 2: [0.5]}  # trial 2 was pruned after fold 0
    assert search_floor(20.0, fold_seconds, best=1) == 20.0 - (2.0 + 3.0)
    assert search_floor(20.0, {1: [1.5, 2.5, 3.5]}, best=1) == 20.0  # one trial: nothing to prune
    # Two trials at once: their fold seconds overlap in the search's wall seconds, which summed would exceed it.
    assert search_floor(4.0, fold_seconds, best=1, at_once=2) == 4.0 - (2.0 + 3.0) / 2
    assert search_floor(4.0, fold_seconds, best=1) == 0.0  # never below zero


def test_the_first_fold_leader_is_the_trial_with_the_lowest_first_fold_loss():
    study = optuna.create_study()
    for losses in ([0.60, 0.70], [0.58, 0.80], [0.65]):  # trial 1 leads on fold 0; trial 0 has the best mean
        trial = study.ask()
        for fold, loss in enumerate(losses):
            trial.report(loss, fold)
        study.tell(trial, sum(losses) / len(losses))
    assert first_fold_leader(study.trials) == 1 != study.best_trial.number
    failed, running = study.ask(), study.ask()
    failed.report(0.10, 0)
    running.report(0.10, 0)
    study.tell(failed, state=optuna.trial.TrialState.FAIL)
    assert first_fold_leader(study.trials) == 1  # neither a failed nor a running trial's first fold counts
