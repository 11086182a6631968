import numpy as np
import pytest

from detoxops.attacks.selection import select_poison_indices


def test_dirty_label_draws_from_all_samples():
    labels = np.repeat(np.arange(10), 500)  # balanced 5000
    idx = select_poison_indices(labels, ratio=0.1, target=0, clean_label=False, seed=0)
    assert len(idx) == 500 and len(np.unique(idx)) == 500 and np.all(np.diff(idx) > 0)
    # target-class samples are included (BackdoorBench), about 1/10 of them
    assert 20 <= (labels[idx] == 0).sum() <= 90
    assert np.array_equal(idx, select_poison_indices(labels, ratio=0.1, target=0, clean_label=False, seed=0))
    assert not np.array_equal(idx, select_poison_indices(labels, ratio=0.1, target=0, clean_label=False, seed=1))


def test_clean_label_ratio_relative_to_whole_set():
    labels = np.repeat(np.arange(10), 500)
    idx = select_poison_indices(labels, ratio=0.1, target=3, clean_label=True, seed=0)
    # round(0.1 * 5000) = 500 requested from the 500 target images: all of them
    assert np.array_equal(idx, np.flatnonzero(labels == 3))
    half = select_poison_indices(labels, ratio=0.05, target=3, clean_label=True, seed=0)
    assert len(half) == 250 and (labels[half] == 3).all()


@pytest.mark.parametrize(("n", "ratio", "want"), [(1000, 0.1, 100), (999, 0.1, 100), (1000, 0.0, 0), (7, 0.5, 4)])
def test_counts_are_rounded(n, ratio, want):
    labels = np.arange(n) % 10
    assert len(select_poison_indices(labels, ratio=ratio, target=0, clean_label=False)) == want
