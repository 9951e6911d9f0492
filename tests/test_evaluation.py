"""The evaluation set of a scope: balanced, and balanced per class, cut into two halves."""

import numpy as np
import pytest

from fedmia.evaluation import balanced_eval_set, split_halves
from fedmia.metrics import BOUND_HALF, SELECTION_HALF


def test_non_members_follow_the_members_label_distribution():
    labels = np.array([0] * 50 + [1] * 50 + [2] * 50)
    members = np.array([0, 1, 2, 3, 50, 51])              # four of class 0, two of class 1
    pool = np.arange(100, 150).tolist() + list(range(10, 20)) + list(range(60, 61))
    indices, membership = balanced_eval_set(members, np.array(pool), labels, np.random.default_rng(0))
    chosen_members, chosen_nonmembers = indices[membership == 1], indices[membership == 0]
    assert sorted(labels[chosen_members]) == sorted(labels[chosen_nonmembers]) == [0, 0, 0, 0, 1]
    assert not set(chosen_members) & set(chosen_nonmembers)
    assert set(chosen_nonmembers) <= set(pool)


def test_same_seed_same_set():
    labels = np.repeat(np.arange(5), 20)
    members, pool = np.arange(0, 100, 2), np.arange(1, 100, 2)
    first = balanced_eval_set(members, pool, labels, np.random.default_rng(3))
    again = balanced_eval_set(members, pool, labels, np.random.default_rng(3))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert first[1].sum() == (1 - first[1]).sum() == 50


def test_halves_are_balanced_per_class_and_differ_by_at_most_one_pair():
    classes = np.repeat([0, 1, 2], [6, 10, 2])            # members per class: 3, 5, 1 (and as many non-members)
    membership = np.concatenate([np.r_[np.ones(n), np.zeros(n)] for n in (3, 5, 1)]).astype(int)
    halves = split_halves(classes, membership, np.random.default_rng(0))
    for side in (SELECTION_HALF, BOUND_HALF):
        chosen = halves == side
        for label in (0, 1, 2):
            in_class = chosen & (classes == label)
            assert membership[in_class].sum() == (1 - membership[in_class]).sum()
    sizes = [(halves == side).sum() // 2 for side in (SELECTION_HALF, BOUND_HALF)]
    assert sorted(sizes) == [4, 5]
    assert np.array_equal(halves, split_halves(classes, membership, np.random.default_rng(0)))
    assert not np.array_equal(halves, split_halves(classes, membership, np.random.default_rng(1)))


def test_halves_need_a_set_balanced_per_class():
    with pytest.raises(ValueError, match="balanced per class"):
        split_halves(np.array([0, 0, 0]), np.array([1, 1, 0]), np.random.default_rng(0))
