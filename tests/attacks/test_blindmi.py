"""BlindMI-Diff: features and edge maps by hand, the incremental MMD against a direct
computation, the move rule on planted clusters, and behaviour on real targets."""

import numpy as np
import pytest
from scipy.ndimage import sobel
from torch import nn

from fedmia.attacks.base import AdversaryKnowledge, Samples, TargetView
from fedmia.attacks.blindmi import (
    BatchSplit,
    BlindMiAttack,
    gaussian_kernel,
    posterior_features,
    sobel_images,
)
from fedmia.errors import FedmiaError
from fedmia.metrics import membership_metrics
from fedmia.models import build_model
from fedmia.training import TrainingPlan, train_epochs


def test_features_are_the_label_posterior_then_the_sorted_top3():
    probs = np.array([[0.1, 0.5, 0.15, 0.25], [0.6, 0.4, 0.0, 0.0]])
    features = posterior_features(np.log(np.maximum(probs, 1e-300)), np.array([2, 1]))
    np.testing.assert_allclose(features, [[0.15, 0.5, 0.25, 0.15], [0.4, 0.6, 0.4, 0.0]], atol=1e-12)


def test_sobel_images_keep_the_edges_only():
    step = np.zeros((1, 1, 4, 4), dtype=np.float32)
    step[..., 2:] = 1.0
    edges = sobel_images(np.concatenate([step, np.ones_like(step)]))
    assert edges.dtype == np.float32 and edges.max() == 1.0
    np.testing.assert_array_equal(edges[0, 0, :, [0, 3]], 0.0)
    assert (edges[0, 0, :, 1:3] > 0).all()
    np.testing.assert_array_equal(edges[1], 0.0)


def test_sobel_images_treat_every_image_and_channel_on_its_own():
    """Each plane's 2-D Sobel magnitude, each image scaled by its largest value."""
    images = np.random.default_rng(0).random((3, 2, 5, 6))
    expected = np.array([[np.hypot(sobel(plane, axis=0), sobel(plane, axis=1)) for plane in image]
                         for image in images])
    expected /= expected.max(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(sobel_images(images), expected, rtol=1e-12)


def direct_mmd2(a: np.ndarray, b: np.ndarray, bandwidth: float) -> float:
    if len(a) == 0:
        return 0.0
    return (gaussian_kernel(a, a, bandwidth).mean() + gaussian_kernel(b, b, bandwidth).mean()
            - 2 * gaussian_kernel(a, b, bandwidth).mean())


def test_batch_mmd_matches_the_sets_it_stands_for():
    rng = np.random.default_rng(0)
    batch, reference = rng.random((7, 4)), rng.random((11, 4))
    total = gaussian_kernel(reference, reference, 0.3).sum()
    split = BatchSplit(batch, reference, total, 0.3)
    masks = rng.random((20, 7)) < 0.5
    masks[0], masks[1] = True, False
    expected = [direct_mmd2(batch[m], np.vstack([reference, batch[~m]]), 0.3) for m in masks]
    np.testing.assert_allclose(split.mmd2(masks), expected, rtol=1e-10, atol=1e-14)


def planted_split() -> BatchSplit:
    """Reference points near the origin; a batch whose first 5 rows look like them and whose
    last 5 sit far away."""
    rng = np.random.default_rng(1)
    reference = rng.normal(0.0, 0.05, (30, 4))
    batch = np.vstack([rng.normal(0.0, 0.05, (5, 4)), rng.normal(1.0, 0.05, (5, 4))])
    return BatchSplit(batch, reference, gaussian_kernel(reference, reference, 0.2).sum(), 0.2)


def test_samples_like_the_reference_move_to_the_non_member_side():
    assert planted_split().converge().tolist() == [False] * 5 + [True] * 5


def test_a_candidate_scores_by_how_much_it_pulls_the_sets_apart():
    scores = planted_split().scores()
    assert (scores[:5] < 0).all() and (scores[5:] > 0).all()


def test_parameters_and_knowledge_are_checked():
    with pytest.raises(FedmiaError, match="reference"):
        BlindMiAttack(reference="gan")
    with pytest.raises(FedmiaError, match="population"):
        BlindMiAttack(reference="population").fit(AdversaryKnowledge(10))


MEMBERS, NONMEMBERS = np.arange(0, 60), np.arange(400, 460)


@pytest.fixture(scope="module")
def target(digits) -> nn.Module:
    model = build_model("cnn", (1, 8, 8), 10, seed=0)
    train_epochs(model, digits.images[MEMBERS], digits.labels[MEMBERS],
                 TrainingPlan(batch_size=16, lr=0.05), 0, epochs=40)
    return model


def evaluate(attack: BlindMiAttack, model: nn.Module, digits, members: np.ndarray,
             nonmembers: np.ndarray) -> tuple[float, float, np.ndarray]:
    """(AUC, accuracy of the decisions at threshold 0, scores) on a balanced set."""
    indices = np.concatenate([members, nonmembers])
    scores = attack.score(TargetView(model), Samples(digits.images[indices], digits.labels[indices],
                                                     indices))
    labels = np.r_[np.ones(len(members)), np.zeros(len(nonmembers))].astype(int)
    return (membership_metrics(scores, labels, 1e-3).auc,
            float((attack.decide(scores) == labels.astype(bool)).mean()), scores)


@pytest.mark.parametrize("reference", ["sobel", "noise"])
def test_an_overfitted_model_leaks_its_members(digits, target, reference):
    attack = BlindMiAttack(reference=reference).fit(AdversaryKnowledge(10, seed=3))
    auc, decisions_correct, scores = evaluate(attack, target, digits, MEMBERS, NONMEMBERS)
    assert auc > 0.7 and decisions_correct > 0.6 and np.isfinite(scores).all()


def test_population_reference_and_uneven_batches(digits, target):
    pool = np.arange(1000, 1300)
    knowledge = AdversaryKnowledge(10, population=Samples(digits.images[pool], digits.labels[pool], pool),
                                   seed=3)
    attack = BlindMiAttack(reference="population", batch=7).fit(knowledge)
    first = evaluate(attack, target, digits, MEMBERS, NONMEMBERS)[2]
    np.testing.assert_array_equal(evaluate(attack, target, digits, MEMBERS, NONMEMBERS)[2], first)
    assert np.isfinite(first).all() and len(np.unique(first)) > 0.9 * len(first)


def test_an_untrained_model_does_not(digits):
    attack = BlindMiAttack().fit(AdversaryKnowledge(10, seed=3))
    auc, _, _ = evaluate(attack, build_model("cnn", (1, 8, 8), 10, seed=0), digits,
                         np.arange(0, 600, 2), np.arange(1, 600, 2))
    assert abs(auc - 0.5) < 0.1
