"""The model-inversion judge on scikit-learn's 8x8 digits, with real records standing in for
inverted images: the evaluator is another architecture that knows the classes, and the three
measures behave as distances should (zero on the records themselves, growing with a shift,
smaller within a class than across classes)."""

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from fedmia.errors import FedmiaError
from fedmia.inversion.judge import (
    EvaluatorCNN,
    attack_accuracy,
    features,
    frechet_distance,
    judge_inversion,
    nearest_private_distance,
    train_evaluator,
)

TRAIN = 900

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def evaluator(digits):
    images, labels = digits
    return train_evaluator(images[:TRAIN], labels[:TRAIN], 10, seed=0, epochs=15)


@pytest.fixture(scope="module")
def held_out(digits):
    """Records the evaluator never saw, by class."""
    images, labels = digits
    return {c: images[TRAIN:][labels[TRAIN:] == c] for c in range(10)}


def test_the_evaluator_is_a_groupnorm_cnn_that_knows_held_out_digits(digits, evaluator):
    images, labels = digits
    assert isinstance(evaluator, EvaluatorCNN) and not evaluator.training
    assert not any(isinstance(module, nn.BatchNorm2d) for module in evaluator.modules())
    assert (evaluator(torch.as_tensor(images[TRAIN:])).argmax(1).numpy() == labels[TRAIN:]).mean() >= 0.9
    assert features(evaluator, images[:5]).shape == (5, 128)


def test_a_seed_fixes_the_evaluator(digits):
    images, labels = digits
    weights = [train_evaluator(images[:200], labels[:200], 10, seed=seed, epochs=1).state_dict()
               for seed in (0, 0, 1)]
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
    assert not torch.equal(weights[0]["head.2.weight"], weights[2]["head.2.weight"])


def test_attack_accuracy_counts_the_target_class(evaluator, held_out):
    assert attack_accuracy(evaluator, held_out[3], 3) >= 0.9
    assert attack_accuracy(evaluator, held_out[3], 8) <= 0.1
    mixed = np.concatenate([held_out[3][:10], held_out[5][:10]])
    assert abs(attack_accuracy(evaluator, mixed, 3) - 0.5) <= 0.1


def test_the_nearest_private_distance_is_zero_on_private_records(evaluator, held_out):
    private = held_out[4]
    assert nearest_private_distance(evaluator, private[:6], private) == 0.0
    same_class = nearest_private_distance(evaluator, private[:20], private[20:])
    other_class = nearest_private_distance(evaluator, held_out[7][:20], private[20:])
    assert 0 < same_class < 0.5 * other_class


def test_the_frechet_distance_is_zero_on_one_set_and_grows_with_a_shift(evaluator, held_out):
    images = held_out[2]
    shifted = [frechet_distance(evaluator, images, np.clip(images + shift, 0, 1)) for shift in (0.1, 0.3, 0.6)]
    assert abs(frechet_distance(evaluator, images, images)) < 1e-6
    assert 0 < shifted[0] < shifted[1] < shifted[2]
    within = frechet_distance(evaluator, images[:25], images[25:])
    assert within < 0.5 * frechet_distance(evaluator, images[:25], held_out[6][:25])


def test_the_frechet_distance_of_a_few_images_is_finite(evaluator, held_out):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        few = frechet_distance(evaluator, held_out[1][:2], held_out[1][2:5])
    assert np.isfinite(few) and few >= 0


def test_judge_inversion_reports_all_three(evaluator, held_out):
    metrics = judge_inversion(evaluator, held_out[9][:8], 9, held_out[9][8:])
    report = metrics.to_dict()
    assert set(report) == {"attack_accuracy", "feature_distance", "frechet", "images"}
    assert report["images"] == 8 and report["attack_accuracy"] >= 0.75
    assert report["feature_distance"] == nearest_private_distance(evaluator, held_out[9][:8], held_out[9][8:])


def test_bad_inputs_are_one_line_errors(digits, evaluator, held_out):
    images, labels = digits
    with pytest.raises(FedmiaError, match=r"labels must be in 0..9"):
        train_evaluator(images[:10], labels[:10] + 5, 10, seed=0)
    with pytest.raises(FedmiaError, match="as many labels as images"):
        train_evaluator(images[:10], labels[:9], 10, seed=0)
    with pytest.raises(FedmiaError, match="n >= 2"):
        frechet_distance(evaluator, held_out[1][:1], held_out[1])
    with pytest.raises(FedmiaError, match=r"\(n, C, H, W\)"):
        attack_accuracy(evaluator, images[0], 1)
