"""What LiRA and RMIA share: augmented queries, reference outputs computed once, the stand-in
threshold. Also the scenarios both attacks' tests run on: small CNNs on digits with planted
membership, and models with exactly controlled outputs."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import pytest
import torch
from torch import nn

from fedmia.attacks.base import AdversaryKnowledge, ReferenceModel, Samples, best_threshold
from fedmia.attacks.references_util import (
    MAX_QUERIES,
    ReferenceSignals,
    population_sample,
    queries,
    stand_in_threshold,
)
from fedmia.data import load_dataset
from fedmia.evaluation import one_torch_thread
from fedmia.models import build_model
from fedmia.training import TrainingPlan, train_epochs

# ---- Models whose log-odds are set by hand ----------------------------------------------


def one_hot_images(count: int) -> np.ndarray:
    """Image n is 1 x 1 x count with a single 1 at column n: its mirror is image count-1-n."""
    return np.eye(count, dtype=np.float32).reshape(count, 1, 1, count)


def fixed_phi_model(phis: list[float]) -> nn.Module:
    """Two classes; on one-hot image n the logits are (0, phis[n]), so the log-odds of label 1
    are exactly phis[n] (values representable in float32)."""
    linear = nn.Linear(len(phis), 2, bias=False)
    with torch.no_grad():
        linear.weight.zero_()
        linear.weight[1] = torch.tensor(phis)
    return nn.Sequential(nn.Flatten(), linear)


def hand_samples(count: int, first_index: int = 10) -> Samples:
    """`count` one-hot records with label 1 and dataset indices first_index, first_index+1..."""
    return Samples(one_hot_images(count), np.ones(count, dtype=np.int64),
                   np.arange(first_index, first_index + count))


def hand_references(phis: list[list[float]], members: list[list[int]]) -> tuple[ReferenceModel, ...]:
    """One reference per row of `phis`, trained (by its membership) on the dataset indices in
    the matching row of `members`."""
    return tuple(ReferenceModel(fixed_phi_model(row), np.array(sorted(ids), dtype=np.int64))
                 for row, ids in zip(phis, members))


# ---- Planted membership on digits -----------------------------------------------------

PLAN = TrainingPlan(batch_size=16, lr=0.05)
TARGET_SIZE, EPOCHS, REFERENCES = 60, 40, 4
MEMBERS, NONMEMBERS = np.arange(0, 60), np.arange(600, 660)
POPULATION = np.arange(1000, 1500)
#: The independent target's own training data, disjoint from every candidate.
ELSEWHERE = np.arange(1500, 1560)


@cache
def digits():
    return load_dataset("digits")


def samples_of(indices: np.ndarray) -> Samples:
    data = digits()
    return Samples(data.images[indices], data.labels[indices], indices)


def trained_cnn(indices: np.ndarray, seed: int, epochs: int = EPOCHS) -> nn.Module:
    """On one torch thread, as the attack phase trains: tiny models gain nothing from a second
    thread and contend for the shared cores."""
    model = build_model("cnn", (1, 8, 8), 10, seed=seed)
    data = digits()
    with one_torch_thread():
        train_epochs(model, data.images[indices], data.labels[indices], PLAN, seed, epochs=epochs)
    return model


def paired_bank(pool: np.ndarray, size: int, seed: int, epochs: int = EPOCHS) -> tuple[ReferenceModel, ...]:
    """REFERENCES models in pairs, each pair splitting a shuffled pool into two halves of `size`
    records: every record of the pool is IN for one model of a pair, OUT for the other."""
    rng = np.random.default_rng(seed)
    memberships = []
    for _ in range(REFERENCES // 2):
        order = rng.permutation(pool)
        half = len(pool) // 2
        memberships += [np.sort(order[:half][:size]), np.sort(order[half:][:size])]
    return tuple(ReferenceModel(trained_cnn(members, seed * 100 + number, epochs), members)
                 for number, members in enumerate(memberships))


@dataclass(frozen=True)
class Scenario:
    """A target, candidates with their true membership in it, and the adversary's knowledge."""

    target: nn.Module
    candidates: Samples
    membership: np.ndarray
    knowledge: AdversaryKnowledge


def knowledge_with(references: tuple[ReferenceModel, ...]) -> AdversaryKnowledge:
    return AdversaryKnowledge(10, references=references, population=samples_of(POPULATION), seed=0)


@cache
def offline_bank() -> tuple[ReferenceModel, ...]:
    """References trained on the population only, each on as many records as the target."""
    return paired_bank(POPULATION, TARGET_SIZE, seed=2)


@cache
def planted(online: bool) -> Scenario:
    """A cnn overfitted on 60 digits (40 epochs); candidates are those 60 and 60 others.
    Online references train on halves of the candidates, offline ones on the population."""
    candidates = np.concatenate([MEMBERS, NONMEMBERS])
    references = paired_bank(candidates, TARGET_SIZE, seed=1) if online else offline_bank()
    membership = np.r_[np.ones(len(MEMBERS)), np.zeros(len(NONMEMBERS))].astype(int)
    return Scenario(trained_cnn(MEMBERS, seed=0), samples_of(candidates), membership,
                    knowledge_with(references))


@cache
def independent(online: bool) -> Scenario:
    """A target trained like the planted one but on records no candidate is among; the
    candidates (300 labelled members, 300 non-members) are all non-members of it. Online
    references train on halves of the 600 candidates (fewer epochs: 300 records each)."""
    fake_members, nonmembers = np.arange(0, 300), np.arange(600, 900)
    candidates = np.concatenate([fake_members, nonmembers])
    references = paired_bank(candidates, 300, seed=3, epochs=10) if online else offline_bank()
    membership = np.r_[np.ones(300), np.zeros(300)].astype(int)
    return Scenario(trained_cnn(ELSEWHERE, seed=5), samples_of(candidates), membership,
                    knowledge_with(references))


# ---- Tests ------------------------------------------------------------------------------


def test_queries_are_the_image_its_mirror_then_one_pixel_shifts_of_both():
    image = np.arange(1, 7, dtype=np.float32).reshape(1, 1, 2, 3)
    asked = queries(image, 6)
    assert asked[0] is image
    expected = [
        [[1, 2, 3], [4, 5, 6]],
        [[3, 2, 1], [6, 5, 4]],  # mirror
        [[0, 1, 2], [0, 4, 5]],  # right: the uncovered column is zero
        [[0, 3, 2], [0, 6, 5]],  # the mirror, right
        [[2, 3, 0], [5, 6, 0]],  # left
        [[2, 1, 0], [5, 4, 0]],  # the mirror, left
    ]
    for version, values in zip(asked, expected):
        np.testing.assert_array_equal(version, [[values]])
        assert version.dtype == np.float32 and version.flags.c_contiguous


@pytest.mark.parametrize("count", [1, 2, 3, MAX_QUERIES])
def test_queries_stop_at_the_count(count):
    images = np.zeros((4, 3, 5, 5), dtype=np.float32)
    assert [version.shape for version in queries(images, count)] == [images.shape] * count


def test_each_reference_answers_each_sample_set_once():
    calls: list[int] = []
    references = hand_references([[0.5, 1.0, -1.0], [2.0, 0.0, 0.25]], [[10], [11, 12]])
    for number, reference in enumerate(references):
        reference.model.register_forward_hook(lambda *_, number=number: calls.append(number))
    signals, records = ReferenceSignals(references, count=2, device="cpu"), hand_samples(3)
    first = signals.log_odds(records)
    assert signals.log_odds(records) is first and sorted(calls) == [0, 0, 1, 1]
    # Query 0 is the records, query 1 their mirror (record n's mirror is record 2 - n).
    np.testing.assert_array_equal(first[:, 0], [[0.5, 1.0, -1.0], [2.0, 0.0, 0.25]])
    np.testing.assert_array_equal(first[:, 1], [[-1.0, 1.0, 0.5], [0.25, 0.0, 2.0]])
    np.testing.assert_array_equal(signals.membership(records), [[1, 0, 0], [0, 1, 1]])
    signals.log_odds(hand_samples(3))
    assert len(calls) == 8, "a new image array is asked again"


def test_population_sample_is_seeded_capped_and_in_order():
    population = hand_samples(20)
    drawn = population_sample(population, 5, seed=3)
    assert np.all(np.diff(drawn.indices) > 0) and len(drawn) == 5
    np.testing.assert_array_equal(drawn.indices, population_sample(population, 5, seed=3).indices)
    assert not np.array_equal(drawn.indices, population_sample(population, 5, seed=4).indices)
    assert len(population_sample(population, 50, seed=3)) == 20
    assert population_sample(None, 5, seed=3) is None


def test_stand_in_threshold_pools_every_usable_stand_in():
    membership = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [0, 1, 0, 1]], dtype=bool)
    by_stand_in = {0: np.array([0.9, 0.4, 0.5, 0.1]), 2: np.array([0.2, 0.8, 0.3, 0.6])}
    seen = []

    def score(stand_in: int, others: np.ndarray) -> np.ndarray:
        seen.append((stand_in, others.tolist()))
        return by_stand_in[stand_in]

    found = stand_in_threshold(membership, score)
    assert seen == [(0, [1, 2]), (2, [0, 1])], "stand-in 1 trained on every record: skipped"
    scores = np.concatenate([by_stand_in[0], by_stand_in[2]])
    assert found == best_threshold(scores, np.r_[membership[0], membership[2]].astype(int)) == 0.6


def test_stand_in_threshold_needs_a_second_reference_and_defined_scores():
    assert stand_in_threshold(np.array([[1, 0, 1]], dtype=bool), lambda *_: np.zeros(3)) is None
    assert stand_in_threshold(np.array([[1, 0], [0, 1]], dtype=bool), lambda *_: None) is None
