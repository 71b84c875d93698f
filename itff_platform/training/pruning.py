"""The pruner of every study: stop a trial after a walk-forward fold when it is significantly worse than the best
completed trial on the same folds.

Why not Optuna's MedianPruner: it compares a trial's *best* intermediate value, from whichever fold was easiest,
with the other trials' values at the current fold. Walk-forward folds are different market periods whose losses
differ more than the trials do, so that comparison mixes periods and almost never prunes. Here every trial is
compared with the others on the same folds, by the quantity the study optimises (the mean fold loss), so a trial
can be stopped after its first fold, the cheapest one of an expanding walk-forward. With one completed trial to
compare against, a default budget of 3 trials can prune 2 of them.

Why a test and not the bare difference of the two means: trials differ by about 1e-3 in log loss, less than the
noise of one fold's mean over a few thousand rows, so "worse on fold 0 by any margin" stopped the trial that was
best over all folds (Lorentzian on the sample: 0.69249 pruned, the study kept 0.69348). Every trial scores the
same rows of a fold, so the two are compared row for row: a one-sided Diebold-Mariano test on the per-row loss
differences (training.significance), with the label horizon's overlap in its variance, at `alpha`."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from itff_platform.training.significance import LossComparison, diebold_mariano

RowLosses = dict[int, np.ndarray]  # a trial's per-row losses by search fold number


def _mean_through(trial: FrozenTrial, step: int) -> float | None:
    """The mean of a trial's fold losses up to `step`; None when it did not reach `step`."""
    if step not in trial.intermediate_values:
        return None
    return float(np.mean([v for s, v in trial.intermediate_values.items() if s <= step]))


class FoldMeanPruner(optuna.pruners.BasePruner):
    """Prune when the trial's loss on the folds it has run is significantly above the leader's on the same folds
    (the completed trial with the lowest mean over them), once `n_startup_trials` trials have completed: a
    one-sided paired test of their per-row losses at `alpha`, the HAC variance covering `horizon` bars of label
    overlap. Pruned trials are never the best trial (Optuna picks the best among completed ones), so a study's
    chosen model always comes from every search fold.

    The per-row losses come from the objective (`record`, for each fold a trial in this process runs) or, for a
    trial another process ran, from `load` (the objective's reader of the predictions that process logged). A
    trial whose rows are known to neither is never pruned: without them there is no test, only a bare difference.
    A trial `load` found nothing for is not asked again (`unloadable`): it would fail the same way on every fold of
    every later trial, each time a download.
    Each trial's last test is kept in `tests` (the objective logs its p-value on the trial's run)."""

    def __init__(self, n_startup_trials: int = 1, alpha: float = 0.05, horizon: int = 1) -> None:
        self.n_startup_trials, self.alpha, self.horizon = n_startup_trials, alpha, horizon
        self.rows: dict[tuple[int, int], np.ndarray] = {}  # (trial number, fold): per-row losses
        self.means: dict[int, dict[int, float]] = {}  # a completed trial's mean fold loss through each fold
        self.lock = threading.Lock()  # `rows` is pruned in one study_jobs thread while another records
        self.load: Callable[[FrozenTrial], RowLosses | None] | None = None
        self.unloadable: set[int] = set()  # trials `load` returned None for
        self.tests: dict[int, tuple[int, int, LossComparison]] = {}  # trial: (fold, leader, the test there)

    def record(self, number: int, fold: int, losses: np.ndarray) -> None:
        with self.lock:
            self.rows[(number, fold)] = np.asarray(losses, np.float64)

    def _known(self, number: int, folds: list[int]) -> list[np.ndarray] | None:
        with self.lock:
            found = [self.rows.get((number, f)) for f in folds]
        return None if any(rows is None for rows in found) else found  # type: ignore[return-value]

    def _rows(self, trial: FrozenTrial, folds: list[int]) -> np.ndarray | None:
        """A trial's per-row losses on `folds`, concatenated; None when they are not known here."""
        found = self._known(trial.number, folds)
        if found is None and self.load is not None and trial.number not in self.unloadable:
            loaded = self.load(trial)
            if loaded is None:
                self.unloadable.add(trial.number)
            for fold, losses in (loaded or {}).items():
                self.record(trial.number, fold, losses)
            found = self._known(trial.number, folds)
        return None if found is None else np.concatenate(found)

    def _means(self, trial: FrozenTrial) -> dict[int, float]:
        """A completed trial's mean fold loss through each fold it ran (computed once: it no longer changes)."""
        if trial.number not in self.means:
            means = {step: _mean_through(trial, step) for step in trial.intermediate_values}
            self.means[trial.number] = {step: mean for step, mean in means.items() if mean is not None}
        return self.means[trial.number]

    def _forget_beaten(self, trials: list[FrozenTrial], completed: list[FrozenTrial]) -> None:
        """Keep the per-row losses of unfinished trials and of completed ones that lead at some fold, the only
        ones a test can use, now or later: a pruned or failed trial is never a leader, and one that leads at no
        fold never will (trials that complete later only add rivals). float64 per row, per fold, per trial."""
        best: dict[int, tuple[float, int]] = {}  # fold: (lowest mean through it, its trial), as `prune` picks
        for t in completed:
            for step, mean in self._means(t).items():
                best[step] = min(best.get(step, (mean, t.number)), (mean, t.number))
        keep = {number for _, number in best.values()} | {t.number for t in trials if not t.state.is_finished()}
        self._keep_rows(lambda number: number in keep)

    def _keep_rows(self, of: Callable[[int], bool]) -> None:
        with self.lock:
            self.rows = {key: rows for key, rows in self.rows.items() if of(key[0])}

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or study.direction != optuna.study.StudyDirection.MINIMIZE:
            return False
        trials = study.get_trials(deepcopy=False)
        completed = [t for t in trials if t.state == TrialState.COMPLETE]
        self._forget_beaten(trials, completed)
        if len(completed) < self.n_startup_trials:
            return False
        others = [(means[step], t.number, t) for t in completed if step in (means := self._means(t))]
        mine = _mean_through(trial, step)
        if not others or mine is None:
            return False
        leader_mean, _, leader = min(others, key=lambda other: other[:2])
        if mine <= leader_mean:
            return False
        folds = sorted(s for s in trial.intermediate_values if s <= step)
        mine_rows, leader_rows = self._rows(trial, folds), self._rows(leader, folds)
        if mine_rows is None or leader_rows is None or len(mine_rows) != len(leader_rows):
            return False
        test = diebold_mariano(leader_rows, mine_rows, self.horizon)  # H1: the leader's loss is lower
        self.tests[trial.number] = (step, leader.number, test)
        if not test.significant(self.alpha):
            return False
        self._keep_rows(lambda number: number != trial.number)  # pruned: never a leader
        return True


def search_floor(search_seconds: float, fold_seconds: dict[int, list[float]], best: int, at_once: int = 1) -> float:
    """The search's seconds had every trial but the `best` stopped after its first fold: the least a pruner that
    stops trials between folds could have spent on these same trials (it must run the best one through every
    search fold to know it is the best). `fold_seconds` holds each trial's seconds per fold it ran. With `at_once`
    trials running side by side (study_jobs x worker processes) the trials' seconds overlap in the search's wall
    seconds: the saving is taken as their sum over `at_once` (an estimate; exact for one), and never below 0 s."""
    saved = sum(sum(seconds[1:]) for number, seconds in fold_seconds.items() if number != best)
    return max(0.0, search_seconds - saved / max(1, at_once))


def first_fold_leader(trials: list[FrozenTrial]) -> int | None:
    """The trial with the lowest first-fold loss among those the search finished (completed or pruned; a failed or
    running trial's fold is no part of it): the one trial a screen on the first fold alone would keep.
    When it is the best trial, the search floor was reachable at an equal best score."""
    done = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED) and t.intermediate_values]
    scored = [(t.intermediate_values[min(t.intermediate_values)], t.number) for t in done]
    return min(scored)[1] if scored else None


def make_pruner(name: str, n_startup_trials: int, alpha: float = 0.05, horizon: int = 1) -> optuna.pruners.BasePruner:
    """`fold_mean` (the default; `alpha` its significance level, `horizon` the label horizon); `median`, Optuna's MedianPruner as the studies used it before (2 startup trials,
    1 warm-up fold: at 3 trials only the third could be pruned), kept to compare; or `none`."""
    if name == "none":
        return optuna.pruners.NopPruner()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    return FoldMeanPruner(n_startup_trials, alpha, horizon)
