"""The pruner of every study: stop a trial after a walk-forward fold when its mean loss so far is worse than what
the completed trials had on the same folds.

Why not Optuna's MedianPruner: it compares a trial's *best* intermediate value, from whichever fold was easiest,
with the other trials' values at the current fold. Walk-forward folds are different market periods whose losses
differ more than the trials do, so that comparison mixes periods and almost never prunes. Here every trial is
compared with the others on the same folds, by the quantity the study optimises (the mean fold loss), so a trial
can be stopped after its first fold, the cheapest one of an expanding walk-forward. With one completed trial to
compare against, a default budget of 3 trials can prune 2 of them."""

from __future__ import annotations

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState


def _mean_through(trial: FrozenTrial, step: int) -> float | None:
    """The mean of a trial's fold losses up to `step`; None when it did not reach `step`."""
    if step not in trial.intermediate_values:
        return None
    return float(np.mean([v for s, v in trial.intermediate_values.items() if s <= step]))


class FoldMeanPruner(optuna.pruners.BasePruner):
    """Prune when the trial's mean fold loss so far is above the median of the completed trials' means over the
    same folds, once `n_startup_trials` trials have completed. Pruned trials are never the best trial (Optuna picks
    the best among completed ones), so a study's chosen model always comes from every search fold."""

    def __init__(self, n_startup_trials: int = 1) -> None:
        self.n_startup_trials = n_startup_trials

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or study.direction != optuna.study.StudyDirection.MINIMIZE:
            return False
        completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(completed) < self.n_startup_trials:
            return False
        others = [m for m in (_mean_through(t, step) for t in completed) if m is not None]
        mine = _mean_through(trial, step)
        return bool(others) and mine is not None and mine > float(np.median(others))


def search_floor(search_seconds: float, fold_seconds: dict[int, list[float]], best: int) -> float:
    """The search's seconds had every trial but the `best` stopped after its first fold: the least a pruner that
    stops trials between folds could have spent on these same trials (it must run the best one through every
    search fold to know it is the best). `fold_seconds` holds each trial's seconds per fold it ran."""
    return search_seconds - sum(sum(seconds[1:]) for number, seconds in fold_seconds.items() if number != best)


def first_fold_leader(trials: list[FrozenTrial]) -> int | None:
    """The trial with the lowest first-fold loss: the one trial a screen on the first fold alone would keep.
    When it is the best trial, the search floor was reachable at an equal best score."""
    scored = [(t.intermediate_values[min(t.intermediate_values)], t.number) for t in trials if t.intermediate_values]
    return min(scored)[1] if scored else None


def make_pruner(name: str, n_startup_trials: int) -> optuna.pruners.BasePruner:
    """`fold_mean` (the default); `median`, Optuna's MedianPruner as the studies used it before (2 startup trials,
    1 warm-up fold: at 3 trials only the third could be pruned), kept to compare; or `none`."""
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    return FoldMeanPruner(n_startup_trials)
