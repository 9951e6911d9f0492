"""Label-only attacks (Choquette-Choo et al. 2021): the target answers with its predicted label
and nothing more, so membership is read off how robustly a sample keeps its true label.

- `label-augment`: how many augmented versions of the sample (one-pixel shifts, then mirror
  images) the target still labels correctly; models fit their training samples' neighbourhoods.
- `label-boundary`: the L2 distance from the sample to the target's decision boundary,
  estimated by a doubling search then bisection along random directions; training samples sit
  farther from the boundary.

Neither score has a natural threshold, so both calibrate on one offline reference model the
adversary trained itself: its scores on the adversary's population, whose membership in the
reference's training set the adversary knows, set the best balanced-accuracy threshold. The
reference is queried through the same label-only view as the target.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import numpy as np

from fedmia.attacks.base import (
    LABELS,
    AdversaryKnowledge,
    MembershipAttack,
    Parameter,
    ReferenceRequest,
    Samples,
    TargetView,
    best_threshold,
)
from fedmia.errors import FedmiaError

#: Pixel offsets (rows, columns) in query order: the sample itself, the four one-pixel shifts
#: along an axis, then the four diagonal ones.
SHIFTS = ((0, 0), (0, 1), (0, -1), (1, 0), (-1, 0), (1, 1), (1, -1), (-1, 1), (-1, -1))
#: Each shift without, then with, a horizontal flip.
AUGMENTATIONS = tuple((flip, shift) for flip in (False, True) for shift in SHIFTS)


def shift_images(images: np.ndarray, rows: int, columns: int) -> np.ndarray:
    """Images moved by whole pixels, the uncovered border filled with zeros (not wrapped
    around, which would paste the opposite edge in)."""
    height, width = images.shape[-2:]
    shifted = np.zeros_like(images)
    shifted[..., max(rows, 0):height + min(rows, 0), max(columns, 0):width + min(columns, 0)] = \
        images[..., max(-rows, 0):height + min(-rows, 0), max(-columns, 0):width + min(-columns, 0)]
    return shifted


def augment(images: np.ndarray, flip: bool, shift: tuple[int, int]) -> np.ndarray:
    return shift_images(images[..., ::-1] if flip else images, *shift)


class LabelOnlyAttack(MembershipAttack):
    """Calibration shared by the label-only attacks: one offline reference model, scored on the
    population through a label-only view."""

    requires: ClassVar[frozenset[str]] = frozenset({LABELS})

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        self._seed = 0

    def references_needed(self) -> ReferenceRequest:
        return ReferenceRequest(1, online=False)

    def fit(self, knowledge: AdversaryKnowledge) -> LabelOnlyAttack:
        if not knowledge.references or not knowledge.population:
            raise FedmiaError(f"attack {self.name!r} calibrates on a reference model and the adversary's "
                              "population pool; give the adversary both")
        self._seed = knowledge.seed
        reference, population = knowledge.references[0], knowledge.population
        membership = reference.trained_on(population.indices).astype(int)
        if membership.min() == membership.max():
            raise FedmiaError(f"attack {self.name!r} needs population samples both in and out of its "
                              "reference model's training set; train the reference on part of the pool")
        view = TargetView(reference.model, frozenset({LABELS}), device=knowledge.plan.device)
        self.threshold = best_threshold(self.score(view, population), membership)
        return self

    @abstractmethod
    def score(self, target: TargetView, samples: Samples) -> np.ndarray:
        """Uses `target.predicted_labels` only."""


class AugmentationAttack(LabelOnlyAttack):
    """Score = the fraction of `queries` augmented copies (in AUGMENTATIONS order: the sample,
    its one-pixel shifts, then the same on the mirror image) the target labels correctly."""

    name: ClassVar[str] = "label-augment"
    parameters: ClassVar[dict[str, Parameter]] = {
        "queries": Parameter(9, low=1, high=len(AUGMENTATIONS),
                             help="augmented copies queried: 9 = the sample and its 8 one-pixel "
                                  "shifts, 18 adds their mirror images"),
    }

    def score(self, target: TargetView, samples: Samples) -> np.ndarray:
        correct = [target.predicted_labels(augment(samples.images, flip, shift)) == samples.labels
                   for flip, shift in AUGMENTATIONS[:self.params["queries"]]]
        return np.mean(correct, axis=0, dtype=np.float64)


class BoundaryDistanceAttack(LabelOnlyAttack):
    """Score = the smallest L2 distance along `directions` random unit directions at which the
    target's label stops being the true one; 0 for a sample it already gets wrong.

    Along each direction, every sample searches at once (one batched query per step): the
    radius doubles from 5% RMS pixel change until the label changes, then bisection narrows
    the bracket for the rest of the `max_queries` budget. A direction that never changes the
    label within the budget counts as the largest radius tried. Pixels are not clipped to the
    valid range: the boundary is the model's, wherever it lies."""

    name: ClassVar[str] = "label-boundary"
    parameters: ClassVar[dict[str, Parameter]] = {
        "directions": Parameter(8, low=1, high=1000, help="random directions searched per sample"),
        "max_queries": Parameter(16, low=2, high=1000, help="label queries per sample and direction"),
    }

    def score(self, target: TargetView, samples: Samples) -> np.ndarray:
        images = samples.images
        correct = target.predicted_labels(images) == samples.labels
        pixels = int(np.prod(images.shape[1:]))
        rng = np.random.default_rng(self._seed)
        distances = np.full(len(samples), np.inf)
        for _ in range(self.params["directions"]):
            direction = rng.standard_normal(images.shape).astype(images.dtype)
            direction /= np.linalg.norm(direction.reshape(len(images), -1), axis=1).reshape(
                (-1,) + (1,) * (images.ndim - 1))
            along = self._distance_along(target, samples, direction, 0.05 * np.sqrt(pixels))
            distances = np.minimum(distances, along)
        return np.where(correct, distances, 0.0)

    def _distance_along(self, target: TargetView, samples: Samples, direction: np.ndarray,
                        start: float) -> np.ndarray:
        """Per sample: the radius at which the label first differs from the true one (the
        upper end of the final bracket), or the largest radius tried when it never does."""
        inside = np.zeros(len(samples))
        outside = np.full(len(samples), np.inf)
        shape = (-1,) + (1,) * (samples.images.ndim - 1)
        for _ in range(self.params["max_queries"]):
            bracketed = np.isfinite(outside)
            radius = np.where(bracketed, (inside + outside) / 2,
                              np.where(inside > 0, 2 * inside, start))
            queries = samples.images + (radius.reshape(shape) * direction).astype(samples.images.dtype)
            kept = target.predicted_labels(queries) == samples.labels
            inside = np.where(kept, radius, inside)
            outside = np.where(kept, outside, radius)
        return np.where(np.isfinite(outside), outside, inside)


LABEL_ONLY_ATTACKS = (AugmentationAttack, BoundaryDistanceAttack)
