"""Reconstruction metrics on inputs whose scores are known by hand."""

import numpy as np
import pytest

from fedmia.inversion.base import NO_LABEL
from fedmia.inversion.metrics import PSNR_CAP, match, pairwise_mse, psnr, score_reconstruction, ssim


def images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((count, 1, 8, 8)).astype(np.float32)


def test_pairing_undoes_a_permutation_by_optimal_assignment():
    truth = images(5)
    order = np.array([3, 0, 4, 1, 2])
    scored = score_reconstruction(truth[order], np.arange(5)[order], truth, np.arange(5))
    assert scored.paired.tolist() == order.tolist()
    assert scored.metrics.psnr == PSNR_CAP and scored.metrics.mse == 0.0
    assert scored.metrics.label_accuracy == 1.0


def test_assignment_is_global_not_greedy():
    # Reconstruction 0 is nearest to record 0, but taking it leaves reconstruction 1 far from
    # record 1; the optimal pairing swaps them.
    truth = np.array([0.0, 1.0]).reshape(2, 1, 1, 1) * np.ones((1, 1, 8, 8))
    reconstructed = np.array([0.45, 0.0]).reshape(2, 1, 1, 1) * np.ones((1, 1, 8, 8))
    costs = pairwise_mse(reconstructed, truth)
    assert np.argmin(costs[0]) == 0
    assert match(reconstructed, truth).tolist() == [1, 0]


def test_psnr_and_mse_of_a_constant_offset():
    truth = np.full((2, 1, 8, 8), 0.5)
    offset = truth + 0.1
    assert psnr(offset, truth) == pytest.approx([20.0, 20.0])
    metrics = score_reconstruction(offset, np.zeros(2, int), truth, np.zeros(2, int)).metrics
    assert metrics.mse == pytest.approx(0.01) and metrics.psnr == pytest.approx(20.0)


def test_ssim_is_one_for_a_copy_and_lower_for_noise():
    truth = images(3)
    assert ssim(truth, truth) == pytest.approx(np.ones(3))
    assert (ssim(images(3, seed=1), truth) < 0.5).all()


def test_labels_count_after_pairing_and_unlabelled_reconstructions_give_none():
    truth = images(3)
    reconstructed = truth[[2, 0, 1]]
    scored = score_reconstruction(reconstructed, np.array([2, 0, 5]), truth, np.array([0, 1, 2]))
    assert scored.metrics.label_accuracy == pytest.approx(2 / 3)
    unlabelled = score_reconstruction(reconstructed, np.full(3, NO_LABEL), truth, np.arange(3))
    assert unlabelled.metrics.label_accuracy is None


def test_extra_reconstructions_are_left_unpaired_and_uncounted():
    truth = images(2)
    reconstructed = np.concatenate([truth, images(1, seed=5)])
    scored = score_reconstruction(reconstructed, np.zeros(3, int), truth, np.zeros(2, int))
    assert scored.paired.tolist() == [0, 1, -1]
    assert scored.metrics.images == 2 and scored.metrics.psnr == PSNR_CAP


def test_shapes_must_agree():
    with pytest.raises(ValueError, match="differ in shape"):
        score_reconstruction(images(1), np.zeros(1, int), np.zeros((1, 3, 8, 8)), np.zeros(1, int))
