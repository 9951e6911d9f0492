"""Label-only attacks: shifts by hand, augmentation counts and boundary distances on models
whose decisions are known in closed form, reference calibration, and behaviour on real targets
through a view that never shows a logit."""

import numpy as np
import pytest
import torch
from torch import nn

from fedmia.attacks.base import (
    LABELS,
    AdversaryKnowledge,
    ReferenceModel,
    ReferenceRequest,
    Samples,
    TargetView,
)
from fedmia.attacks.label_only import AugmentationAttack, BoundaryDistanceAttack, augment, shift_images
from fedmia.errors import FedmiaError
from fedmia.metrics import membership_metrics
from fedmia.models import build_model
from tests.attacks.planted import overfitted_cnn

LABEL_ONLY = frozenset({LABELS})
GRID = np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)


def test_shifts_move_whole_pixels_and_fill_with_zeros():
    np.testing.assert_array_equal(shift_images(GRID, 0, 1)[0, 0], [[0, 1, 2], [0, 4, 5], [0, 7, 8]])
    np.testing.assert_array_equal(shift_images(GRID, -1, -1)[0, 0], [[5, 6, 0], [8, 9, 0], [0, 0, 0]])
    np.testing.assert_array_equal(augment(GRID, True, (1, 0))[0, 0], [[0, 0, 0], [3, 2, 1], [6, 5, 4]])


def linear_model(weights: np.ndarray, bias: float) -> nn.Module:
    """Two classes on flattened images: class 1 exactly when weights . x > bias."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(weights.size, 2))
    with torch.no_grad():
        model[1].weight.copy_(torch.as_tensor(np.stack([np.zeros(weights.size), weights.ravel()])))
        model[1].bias.copy_(torch.as_tensor([bias, 0.0]))
    return model


def samples_of(images: np.ndarray, labels: list[int]) -> Samples:
    return Samples(images.astype(np.float32), np.array(labels), np.arange(len(labels)))


def test_augmentation_score_counts_the_queries_labelled_right():
    """Class 1 iff the centre pixel is lit: a lone centre dot keeps its label only unshifted
    (and mirrored), a fully lit image under every shift."""
    centre = np.zeros((3, 3))
    centre[1, 1] = 1.0
    target = TargetView(linear_model(centre, 0.5), LABEL_ONLY)
    images = np.stack([centre, np.ones((3, 3)), np.zeros((3, 3))])[:, None]
    samples = samples_of(images, [1, 1, 1])
    np.testing.assert_allclose(AugmentationAttack().score(target, samples), [1 / 9, 1, 0])
    np.testing.assert_allclose(AugmentationAttack(queries=18).score(target, samples), [2 / 18, 1, 0])
    np.testing.assert_allclose(AugmentationAttack(queries=1).score(target, samples), [1, 1, 0])


WEIGHTS = np.array([[3.0, 4.0]]).reshape(1, 1, 2)  # |w| = 5


def test_bisection_finds_the_boundary_along_a_direction():
    """Class 1 iff 3a + 4b > 5. From (0, 0) along w/|w| the boundary is 1 away; along an
    orthogonal direction it is never reached."""
    target = TargetView(linear_model(WEIGHTS, 5.0), LABEL_ONLY)
    samples = samples_of(np.zeros((2, 1, 1, 2)), [0, 0])
    direction = np.array([[3.0, 4.0], [-4.0, 3.0]]).reshape(2, 1, 1, 2) / 5
    attack = BoundaryDistanceAttack(max_queries=20)
    distances = attack._distance_along(target, samples, direction.astype(np.float32), 0.1)
    assert distances[0] == pytest.approx(1.0, rel=1e-3) and distances[0] >= 1.0 - 1e-6
    assert distances[1] == pytest.approx(0.1 * 2 ** 19)


def test_boundary_distance_grows_with_the_distance_to_the_boundary():
    """For a linear model the distance along any direction scales with the distance to the
    hyperplane, so the estimate from the same (seeded) directions does too, and it never
    undercuts the true distance; a sample on the wrong side scores 0."""
    target = TargetView(linear_model(WEIGHTS, 5.0), LABEL_ONLY)
    attack = BoundaryDistanceAttack(directions=16, max_queries=30)
    points = np.array([[-0.6, -0.8], [-1.8, -2.4], [3.0, 4.0]]).reshape(3, 1, 1, 2)  # 2, 4 away
    near, far, wrong = (attack.score(target, samples_of(point[None], [0]))[0] for point in points)
    assert near >= 2.0 - 1e-4 and far == pytest.approx(2 * near, rel=1e-4) and wrong == 0.0


def test_label_only_attacks_ask_for_one_offline_reference():
    for attack in (AugmentationAttack(), BoundaryDistanceAttack()):
        assert attack.references_needed() == ReferenceRequest(1, online=False)
        assert attack.requires == LABEL_ONLY


def test_fit_needs_a_reference_that_splits_the_population():
    pool = samples_of(np.zeros((4, 1, 3, 3)), [0, 1, 0, 1])
    with pytest.raises(FedmiaError, match="reference model"):
        AugmentationAttack().fit(AdversaryKnowledge(2, population=pool))
    everything = ReferenceModel(linear_model(np.ones((3, 3)), 0.0), np.arange(4))
    with pytest.raises(FedmiaError, match="both in and out"):
        AugmentationAttack().fit(AdversaryKnowledge(2, references=(everything,), population=pool))


def digit_samples(digits, indices: np.ndarray) -> Samples:
    return Samples(digits.images[indices], digits.labels[indices], indices)


@pytest.fixture(scope="module")
def knowledge(digits) -> AdversaryKnowledge:
    """A reference model trained like the target on 60 of the adversary's 200 pool samples."""
    pool = np.arange(1000, 1200)
    reference = ReferenceModel(overfitted_cnn(digits, pool[:60], seed=7), pool[:60])
    return AdversaryKnowledge(10, references=(reference,), population=digit_samples(digits, pool), seed=3)


MEMBERS, NONMEMBERS = np.arange(0, 60), np.arange(400, 460)


@pytest.fixture(scope="module")
def target(digits) -> nn.Module:
    return overfitted_cnn(digits, MEMBERS, seed=0)


def evaluate(attack, model: nn.Module, digits, members: np.ndarray,
             nonmembers: np.ndarray) -> tuple[float, float]:
    """(AUC, accuracy of the decisions at the reference-calibrated threshold) through a
    label-only view, on a balanced set."""
    view = TargetView(model, LABEL_ONLY)
    with pytest.raises(PermissionError):
        view.logits(digits.images[:1])
    scores = attack.score(view, digit_samples(digits, np.concatenate([members, nonmembers])))
    labels = np.r_[np.ones(len(members)), np.zeros(len(nonmembers))].astype(int)
    assert np.isfinite(scores).all()
    return (membership_metrics(scores, labels, 1e-3).auc,
            float((attack.decide(scores) == labels.astype(bool)).mean()))


ATTACKS = [AugmentationAttack, BoundaryDistanceAttack]


@pytest.mark.parametrize("attack", ATTACKS)
def test_an_overfitted_model_leaks_its_members(digits, knowledge, target, attack):
    auc, decisions_correct = evaluate(attack().fit(knowledge), target, digits, MEMBERS, NONMEMBERS)
    assert auc > 0.6 and decisions_correct > 0.55


@pytest.mark.parametrize("attack", ATTACKS)
def test_an_untrained_model_does_not(digits, knowledge, attack):
    auc, _ = evaluate(attack().fit(knowledge), build_model("cnn", (1, 8, 8), 10, seed=0), digits,
                      np.arange(0, 600, 2), np.arange(1, 600, 2))
    assert abs(auc - 0.5) < 0.1
