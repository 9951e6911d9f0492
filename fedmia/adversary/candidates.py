"""Candidate records: the samples an adversary scores, half members and half non-members.

Every scope's evaluation set is drawn here, seeded, so that whoever needs it gets the same
records: the attack phase, and an active malicious client, which must know its candidate
records while it trains (it may know the records, never their membership).
"""

from __future__ import annotations

import numpy as np

from fedmia.data import PrivacySplit
from fedmia.seeding import round_seed

#: Seed stream of the malicious scopes' evaluation sets.
MALICIOUS_STREAM = 4_000_004


def balanced_eval_set(members: np.ndarray, nonmember_pool: np.ndarray, labels: np.ndarray,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(indices, membership) with equally many members and non-members *per class*.

    Non-members must come from the members' distribution: a client that holds two classes,
    compared with non-members of all ten, would be "detected" by its label skew alone. So for
    every class, as many members as non-members of that class are drawn (the smaller count).
    """
    chosen_members, chosen_nonmembers = [], []
    for label in np.unique(labels[members]):
        in_class = members[labels[members] == label]
        pool_class = nonmember_pool[labels[nonmember_pool] == label]
        size = min(len(in_class), len(pool_class))
        chosen_members.append(rng.choice(in_class, size, replace=False))
        chosen_nonmembers.append(rng.choice(pool_class, size, replace=False))
    member_part = np.sort(np.concatenate(chosen_members))
    nonmember_part = np.sort(np.concatenate(chosen_nonmembers))
    indices = np.concatenate([member_part, nonmember_part])
    membership = np.concatenate([np.ones(len(member_part), dtype=np.int64),
                                 np.zeros(len(nonmember_part), dtype=np.int64)])
    return indices, membership


def malicious_members(split: PrivacySplit, client: int) -> np.ndarray:
    """Malicious client `client` attacks the union of the other clients' data."""
    others = [indices for other, indices in enumerate(split.clients) if other != client]
    return np.sort(np.concatenate(others)) if others else np.zeros(0, dtype=np.int64)


def malicious_candidates(split: PrivacySplit, labels: np.ndarray, seed: int,
                         client: int) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
    """(dataset indices, membership, generator) of malicious client `client`'s evaluation
    set; the generator has drawn the set and continues with the scope's halves."""
    rng = np.random.default_rng(round_seed(seed, MALICIOUS_STREAM, client))
    indices, membership = balanced_eval_set(malicious_members(split, client), split.nonmembers, labels, rng)
    return indices, membership, rng
