"""The memorization check on real digits: copies of private images are flagged, fresh real
images are flagged at about the chosen quantile, and the distances are the true nearest ones."""

import json

import matplotlib.pyplot as plt
import numpy as np
import pytest
from sklearn.datasets import load_digits

from fedmia.errors import FedmiaError
from fedmia.synthesis import closest_pairs_grid, memorization_check
from fedmia.synthesis.memorization import nearest_neighbours

QUANTILE = 0.05


@pytest.fixture(scope="module")
def split():
    """Disjoint private, reference and fresh real digits."""
    images = (load_digits().images / 16.0).astype(np.float32)[:, None]
    order = np.random.default_rng(0).permutation(len(images))
    return images[order[:700]], images[order[700:1200]], images[order[1200:1700]]


def pooled(images: np.ndarray) -> np.ndarray:
    """A small feature map: 2x2 mean pooling, 8x8 -> 16 features."""
    return images.reshape(len(images), 4, 2, 4, 2).mean(axis=(2, 4)).reshape(len(images), 16)


def test_copies_of_private_images_are_all_flagged(split):
    private, reference, _ = split
    picked = np.random.default_rng(1).choice(len(private), 200, replace=False)
    report = memorization_check(private[picked], private, reference, features=pooled, quantile=QUANTILE)
    for space in (report.pixels, report.features):
        assert space.fraction_closer == 1.0 and space.threshold > 0
        np.testing.assert_array_equal(space.distances, 0.0)
    assert np.array_equal(private[report.pixels.nearest], private[picked])


def test_slightly_noisy_copies_are_still_flagged(split):
    private, reference, _ = split
    noisy = np.clip(private[:200] + np.random.default_rng(2).normal(0, 0.03, private[:200].shape), 0, 1)
    assert memorization_check(noisy, private, reference).pixels.fraction_closer > 0.95


def test_fresh_real_images_are_flagged_at_about_the_quantile(split):
    private, reference, fresh = split
    report = memorization_check(fresh, private, reference, features=pooled, quantile=QUANTILE)
    for space in (report.pixels, report.features):
        assert space.fraction_closer < 3 * QUANTILE, space.fraction_closer
        assert space.distances.mean() > space.threshold
    wider = memorization_check(fresh, private, reference, quantile=0.5)
    assert 0.35 < wider.pixels.fraction_closer < 0.65


def test_distances_are_the_true_nearest_ones_whatever_the_chunk(split):
    private, _, fresh = split
    queries, pool = fresh[:150].reshape(150, -1), private.reshape(len(private), -1)
    full = np.sqrt(((queries[:, None, :].astype(np.float64) - pool[None, :, :]) ** 2).sum(axis=2))
    for chunk in (7, 1024):
        distances, nearest = nearest_neighbours(queries, pool, chunk_rows=chunk)
        np.testing.assert_allclose(distances, full.min(axis=1), rtol=1e-6)
        np.testing.assert_allclose(full[np.arange(150), nearest], full.min(axis=1), rtol=1e-6)


def test_report_is_json_with_the_closest_pairs_first(split):
    private, reference, fresh = split
    synthetic = np.concatenate([fresh[:50], private[[3, 9]]])
    report = memorization_check(synthetic, private, reference, features=pooled)
    summary = json.loads(json.dumps(report.to_dict(pairs=5)))
    pairs = summary["pixels"]["closest_pairs"]
    assert len(pairs) == 5 and [pair["distance"] for pair in pairs] == sorted(pair["distance"] for pair in pairs)
    assert {(pair["synthetic"], pair["private"]) for pair in pairs[:2]} == {(50, 3), (51, 9)}
    assert summary["quantile"] == QUANTILE and summary["synthetic"] == 52
    assert summary["pixels"]["median_distance"] == pytest.approx(np.median(report.pixels.distances))
    assert summary["pixels"]["mean_distance"] == pytest.approx(report.pixels.distances.mean())
    assert summary["features"]["fraction_closer"] >= 2 / 52


@pytest.mark.parametrize("channels", [1, 3])
def test_closest_pairs_grid_writes_a_png(tmp_path, split, channels):
    private, reference, fresh = split
    if channels == 3:
        private, reference, fresh = (np.repeat(array, 3, axis=1) for array in (private, reference, fresh))
    report = memorization_check(fresh[:40], private, reference)
    path = closest_pairs_grid(report, fresh[:40], private, tmp_path / "pairs.png", pairs=10)
    assert plt.imread(path).shape[0] > 100
    with pytest.raises(FedmiaError, match="pairs"):
        closest_pairs_grid(report, fresh[:40], private, tmp_path / "none.png", pairs=0)


def test_bad_arguments_are_user_errors(split):
    private, reference, fresh = split
    with pytest.raises(FedmiaError, match="quantile"):
        memorization_check(fresh, private, reference, quantile=1.0)
    with pytest.raises(FedmiaError, match="non-empty"):
        memorization_check(fresh[:0], private, reference)
    with pytest.raises(FedmiaError, match="one shape"):
        memorization_check(fresh[:, :, :4], private, reference)
    with pytest.raises(FedmiaError, match="NaN"):
        memorization_check(np.full_like(fresh[:3], np.nan), private, reference)
    with pytest.raises(FedmiaError, match="disjoint"):
        memorization_check(fresh, private, private[:100])
    with pytest.raises(FedmiaError, match="one feature vector"):
        memorization_check(fresh, private, reference, features=lambda images: images.reshape(-1))
    with pytest.raises(FedmiaError, match="different widths"):  # 5 features for 500 images, 7 for 700
        memorization_check(fresh, private, reference, features=lambda images: pooled(images)[:, : len(images) // 100])
