"""Does a generator copy its training images? A nearest-neighbour check against real data.

Diffusion models can reproduce training images nearly pixel for pixel (Carlini et al. 2023,
"Extracting training data from diffusion models"), and a synthetic set that contains copies of
private records leaks them however it is used. For every synthetic sample the check finds the
nearest private sample. What counts as "close" is calibrated on real data: the distances from
`reference` samples (real, disjoint from the private set) to their nearest private samples are
what independent draws from the same distribution give, and their `quantile` is the threshold.
A generator that does not memorize puts about `quantile` of its samples below it; one that
copies puts nearly all. The same is done in a feature space when a feature map is given, where
near-copies that differ by small shifts or brightness still sit close together.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedmia.errors import FedmiaError
from fedmia.image_grid import pair_grid

#: Rows of the query set per block of the distance matrix: 1024 x 10,000 floats is 40 MB.
CHUNK_ROWS = 1024


@dataclass(frozen=True)
class SpaceReport:
    """Nearest-private distances of the synthetic samples in one space (pixels or features).

    `distances[i]` is the L2 distance from synthetic sample i to private sample `nearest[i]`;
    `threshold` is the `quantile` of the reference samples' nearest-private distances, and
    `fraction_closer` the share of synthetic samples strictly closer than it.
    """

    distances: np.ndarray
    nearest: np.ndarray
    threshold: float
    fraction_closer: float

    def closest(self, pairs: int) -> list[tuple[int, int, float]]:
        """The `pairs` closest (synthetic index, private index, distance), closest first."""
        order = np.argsort(self.distances, kind="stable")[:pairs]
        return [(int(i), int(self.nearest[i]), float(self.distances[i])) for i in order]

    def to_dict(self, pairs: int) -> dict[str, Any]:
        return {"threshold": self.threshold, "fraction_closer": self.fraction_closer,
                "mean_distance": float(self.distances.mean()), "median_distance": float(np.median(self.distances)),
                "closest_pairs": [{"synthetic": s, "private": p, "distance": d} for s, p, d in self.closest(pairs)]}


@dataclass(frozen=True)
class MemorizationReport:
    """The check in pixel space and, when a feature map was given, in its feature space."""

    quantile: float
    pixels: SpaceReport
    features: SpaceReport | None

    def to_dict(self, pairs: int = 16) -> dict[str, Any]:
        """JSON values: the quantile, and per space the threshold, the fraction closer, the
        mean and median distance and the `pairs` closest pairs."""
        return {"quantile": self.quantile, "synthetic": int(len(self.pixels.distances)),
                "pixels": self.pixels.to_dict(pairs),
                "features": None if self.features is None else self.features.to_dict(pairs)}


def memorization_check(synthetic: np.ndarray, private: np.ndarray, reference: np.ndarray,
                       features: Callable[[np.ndarray], np.ndarray] | None = None,
                       quantile: float = 0.05) -> MemorizationReport:
    """Compare `synthetic` samples with the `private` set they were generated from, against
    the yardstick of `reference` samples: real, from the same distribution, not in `private`.
    All three are arrays of the same per-sample shape; `features` maps such an array to
    (n, d) feature vectors."""
    if not 0 < quantile < 1:
        raise FedmiaError(f"quantile must be in (0, 1), got {quantile}")
    _check_sets({"synthetic": synthetic, "private": private, "reference": reference})
    pixels = _space_report(*(_flat(array) for array in (synthetic, private, reference)), quantile, "pixel")
    if features is None:
        return MemorizationReport(quantile, pixels, None)
    mapped = [_mapped(features, array) for array in (synthetic, private, reference)]
    if len({array.shape[1] for array in mapped}) != 1:
        raise FedmiaError("the feature map gave different widths for the three sets; it must map "
                          "every sample to the same number of features")
    return MemorizationReport(quantile, pixels, _space_report(*mapped, quantile, "feature"))


def _space_report(synthetic: np.ndarray, private: np.ndarray, reference: np.ndarray, quantile: float,
                  space: str) -> SpaceReport:
    reference_distances, _ = nearest_neighbours(reference, private)
    threshold = float(np.quantile(reference_distances, quantile))
    if threshold <= 0:
        raise FedmiaError(f"at least {quantile:.0%} of the reference samples equal a private sample in "
                          f"{space} space; the reference set must be disjoint from the private set")
    distances, nearest = nearest_neighbours(synthetic, private)
    return SpaceReport(distances, nearest, threshold, float(np.mean(distances < threshold)))


def nearest_neighbours(queries: np.ndarray, pool: np.ndarray,
                       chunk_rows: int = CHUNK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """For each row of `queries` (n, d), the L2 distance to its nearest row of `pool` (m, d)
    and that row's index. Blocks of `chunk_rows` queries against the whole pool keep memory
    at chunk_rows x m; the nearest row is found with float32 matrix products and its distance
    then recomputed exactly in float64, so a copy is at distance 0, not float32 rounding."""
    pool_tensor = torch.from_numpy(np.ascontiguousarray(pool, dtype=np.float32))
    pool_norms = (pool_tensor**2).sum(dim=1)
    indices = np.empty(len(queries), dtype=np.int64)
    distances = np.empty(len(queries), dtype=np.float64)
    for start in range(0, len(queries), chunk_rows):
        rows = queries[start:start + chunk_rows]
        block = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))
        squared = (block**2).sum(dim=1, keepdim=True) - 2 * block @ pool_tensor.T + pool_norms
        nearest = squared.argmin(dim=1).numpy()
        gaps = rows.astype(np.float64) - pool[nearest].astype(np.float64)
        indices[start:start + len(rows)] = nearest
        distances[start:start + len(rows)] = np.sqrt((gaps**2).sum(axis=1))
    return distances, indices


def closest_pairs_grid(report: MemorizationReport, synthetic: np.ndarray, private: np.ndarray, path: Path | str,
                       pairs: int = 16) -> Path:
    """A PNG of the `pairs` closest synthetic/private pairs in pixel space, eight pairs to a
    band: each synthetic image above its nearest private image, titled with their distance."""
    if pairs < 1:
        raise FedmiaError(f"pairs must be >= 1, got {pairs}")
    chosen = report.pixels.closest(pairs)
    return pair_grid(synthetic[[s for s, _, _ in chosen]], private[[p for _, p, _ in chosen]],
                     [f"{distance:.2f}" for _, _, distance in chosen],
                     "closest pairs: synthetic (upper) and nearest private (lower), L2 in pixels", path)


def _mapped(features: Callable[[np.ndarray], np.ndarray], samples: np.ndarray) -> np.ndarray:
    vectors = np.asarray(features(samples))
    if vectors.ndim != 2 or len(vectors) != len(samples):
        raise FedmiaError(f"the feature map returned shape {vectors.shape} for {len(samples)} samples; "
                          "it must return one feature vector (n, d) per sample")
    return _flat(vectors, "features")


def _flat(array: np.ndarray, name: str = "samples") -> np.ndarray:
    if array.ndim < 2:
        raise FedmiaError(f"{name} must be an array of samples (n, ...), got shape {array.shape}")
    flat = array.reshape(len(array), -1)
    if not np.all(np.isfinite(flat)):
        raise FedmiaError(f"{name} contain NaN or infinite values; check the generator and the feature map")
    return flat


def _check_sets(sets: dict[str, np.ndarray]) -> None:
    for name, array in sets.items():
        if not isinstance(array, np.ndarray) or array.ndim < 2 or len(array) == 0:
            got = array.shape if isinstance(array, np.ndarray) else type(array).__name__
            raise FedmiaError(f"{name} must be a non-empty array of samples (n, ...), got {got}")
    shapes = {name: array.shape[1:] for name, array in sets.items()}
    if len(set(shapes.values())) != 1:
        raise FedmiaError(f"synthetic, private and reference samples must share one shape, got {shapes}")
