"""The evaluation set of a scope: balanced, and balanced per class."""

import numpy as np

from fedmia.evaluation import balanced_eval_set


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
