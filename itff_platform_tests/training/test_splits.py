import itertools

import pytest

from itff_platform.training.splits import walk_forward_splits


def test_folds_never_overlap_and_step_forward():
    folds = walk_forward_splits(5000, n_folds=4, test_rows=400, horizon=4, embargo=24)
    tests = [f.test for f in folds]
    for fold in folds:
        assert not set(fold.train) & set(fold.test)
    for earlier, later in itertools.pairwise(tests):
        assert later[0] == earlier[-1] + 1 + 24  # an embargo gap follows each test window
    assert tests[-1][-1] == 4999


def test_no_training_label_reaches_into_its_test_window():
    horizon = 6
    folds = walk_forward_splits(5000, n_folds=4, test_rows=400, horizon=horizon, embargo=10)
    for fold in folds:
        # A label at row i reads rows i+1..i+horizon.
        assert fold.train.max() + horizon < fold.test.min()
    # Purged exactly, not more (later folds also lose the earlier window's embargo, which borders them).
    assert folds[0].train.max() == folds[0].test.min() - horizon - 1


def test_rows_just_after_an_earlier_test_window_are_embargoed():
    folds = walk_forward_splits(5000, n_folds=3, test_rows=400, horizon=4, embargo=30)
    first_test_end = folds[0].test[-1]
    embargo_zone = set(range(first_test_end + 1, first_test_end + 31))
    for later in folds[1:]:
        assert not embargo_zone & set(later.train)
        assert set(folds[0].test) <= set(later.train)  # earlier test rows do become training rows


def test_sliding_windows_keep_a_fixed_training_length():
    folds = walk_forward_splits(5000, n_folds=3, test_rows=300, horizon=4, embargo=0, mode="sliding", train_rows=1000)
    assert all(len(f.train) == 1000 for f in folds)
    assert folds[1].train[0] > folds[0].train[0]


def test_too_little_data_says_which_setting_to_change():
    with pytest.raises(ValueError, match="lower wf_folds or wf_test_fraction"):
        walk_forward_splits(500, n_folds=4, test_rows=120, horizon=4, embargo=24)


def test_an_empty_test_window_is_refused():
    with pytest.raises(ValueError, match="raise wf_test_fraction"):
        walk_forward_splits(5000, n_folds=4, test_rows=0, horizon=4, embargo=0)
