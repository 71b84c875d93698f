"""Walk-forward splits over time-ordered rows: purged and embargoed.

Test windows sit at the end of the data, `embargo` rows apart. Each fold trains on rows before its test window:
- purged: a training row whose label horizon (the next `horizon` rows) reaches the test window is dropped;
- embargoed: the `embargo` rows after every earlier test window are never trained on, since their rolling
  features overlap the test period;
- expanding (all earlier rows) or sliding (the last `train_rows` of them).
Rows, not timestamps: with gaps, `horizon` rows span at least `horizon` bars, so the purge is never too short.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Fold:
    number: int
    train: np.ndarray
    test: np.ndarray


def walk_forward_splits(
    n_rows: int,
    n_folds: int,
    test_rows: int,
    horizon: int,
    embargo: int,
    mode: str = "expanding",
    train_rows: int | None = None,
) -> list[Fold]:
    if test_rows < 1:
        raise ValueError(f"walk-forward: test windows of {test_rows} rows; raise wf_test_fraction")
    first_test = n_rows - n_folds * test_rows - (n_folds - 1) * embargo
    if first_test - horizon < max(50, test_rows // 2):
        raise ValueError(
            f"walk-forward: {n_rows} rows cannot hold {n_folds} test windows of {test_rows} rows, {embargo}-row "
            f"embargoes and a training window; lower wf_folds or wf_test_fraction"
        )
    embargoed = np.zeros(n_rows, dtype=bool)
    folds = []
    for number in range(n_folds):
        start = first_test + number * (test_rows + embargo)
        test = np.arange(start, start + test_rows)
        train_end = start - horizon  # purge: labels of rows >= start - horizon read into the test window
        train_start = max(0, train_end - train_rows) if mode == "sliding" and train_rows else 0
        candidates = np.arange(train_start, train_end)
        folds.append(Fold(number, candidates[~embargoed[candidates]], test))
        embargoed[test[-1] + 1 : test[-1] + 1 + embargo] = True
    return folds
