"""BlindMI differential comparison (Hui et al. 2021, "Practical Blind Membership Inference
Attack via Differential Comparisons"), the BlindMI-Diff-w/ variant: single direction, with a
generated non-member set, no shadow model.

The adversary builds a reference set of samples the target certainly never trained on (the
candidates' Sobel edge maps, random noise images, or its own population pool), and represents
every sample by the target's posteriors: the true label's posterior followed by the top-3
posteriors in decreasing order. Candidates are shuffled into small batches; in each batch all
candidates start as tentative members and, sweep after sweep, every candidate whose move to the
non-member side increases the Gaussian-kernel MMD between the two sides is moved there (all of a
sweep's moves are judged against the same sets, as in the paper), until no move helps.

fedmia needs a continuous score for its ROC, so after the batch converges each candidate is
scored by how much the MMD drops when it sits on the non-member side instead of the member side:
positive means it looks like a member. Threshold 0 is the method's own decision.

Kernel sums are updated from per-batch blocks, so memory stays O(n * batch) and O(reference
size * chunk) for n candidates, never O(n^2).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from scipy.ndimage import correlate1d
from scipy.special import softmax

from fedmia.attacks.base import (
    OUTPUTS,
    AdversaryKnowledge,
    MembershipAttack,
    Parameter,
    Samples,
    TargetView,
)
from fedmia.errors import FedmiaError

REFERENCES = ("sobel", "noise", "population")
TOP = 3
#: Rows of the reference set whose kernel block is held at once.
CHUNK = 256


def posterior_features(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(p_label, top-1, top-2, top-3 posteriors) per sample, zero-padded below three classes.
    The label's posterior tells a confident right answer from a confident wrong one."""
    probs = softmax(np.asarray(logits, dtype=np.float64), axis=1)
    top = -np.sort(-probs, axis=1)[:, :TOP]
    top = np.pad(top, ((0, 0), (0, TOP - top.shape[1])))
    return np.hstack([probs[np.arange(len(labels)), labels][:, None], top])


def sobel_gradient(images: np.ndarray, axis: int) -> np.ndarray:
    """The Sobel derivative along one image axis, smoothed along the other image axis only
    (scipy's `sobel` would also smooth across the channels and the images of the batch)."""
    across = -1 if axis == -2 else -2
    derivative = correlate1d(images, [-1.0, 0.0, 1.0], axis=axis, mode="reflect")
    return correlate1d(derivative, [1.0, 2.0, 1.0], axis=across, mode="reflect")


def sobel_images(images: np.ndarray) -> np.ndarray:
    """Gradient magnitude of every channel, each image scaled to a maximum of 1: the shapes of
    the candidates without their texture, which the target was never trained on."""
    magnitude = np.hypot(sobel_gradient(images, -1), sobel_gradient(images, -2))
    peak = magnitude.max(axis=(1, 2, 3), keepdims=True)
    return (magnitude / np.where(peak > 0, peak, 1.0)).astype(images.dtype)


def gaussian_kernel(a: np.ndarray, b: np.ndarray, bandwidth: float) -> np.ndarray:
    distances = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.exp(-np.maximum(distances, 0.0) / (2.0 * bandwidth**2))


def kernel_total(points: np.ndarray, bandwidth: float) -> float:
    """Sum of k(x, y) over all pairs of `points`, a block of CHUNK rows at a time."""
    return float(sum(gaussian_kernel(points[start:start + CHUNK], points, bandwidth).sum()
                     for start in range(0, len(points), CHUNK)))


class BatchSplit:
    """One batch of candidates against the fixed reference set R. A mask row says which of the
    batch's candidates are on the member side A; the rest join R on the non-member side B.
    MMD^2(A, B) = sum k(A,A)/|A|^2 + sum k(B,B)/|B|^2 - 2 sum k(A,B)/(|A||B|) (the biased
    estimator) is computed from the batch's own kernel matrix, its row sums against R and the
    precomputed sum over R x R, for many masks at once."""

    def __init__(self, batch: np.ndarray, reference: np.ndarray, reference_total: float,
                 bandwidth: float) -> None:
        self.kernel = gaussian_kernel(batch, batch, bandwidth)
        self.to_reference = gaussian_kernel(batch, reference, bandwidth).sum(axis=1)
        self.reference_total = reference_total
        self.reference_size = len(reference)

    def mmd2(self, masks: np.ndarray) -> np.ndarray:
        """MMD^2 for each mask row; 0 for an empty member side (nothing left to compare)."""
        inside = masks.astype(np.float64)
        outside = 1.0 - inside
        n_a = inside.sum(axis=1)
        n_b = self.reference_size + outside.sum(axis=1)
        k_aa = np.einsum("mi,ij,mj->m", inside, self.kernel, inside)
        k_bb = (self.reference_total + 2.0 * outside @ self.to_reference
                + np.einsum("mi,ij,mj->m", outside, self.kernel, outside))
        k_ab = inside @ self.to_reference + np.einsum("mi,ij,mj->m", inside, self.kernel, outside)
        safe_a = np.maximum(n_a, 1.0)
        value = k_aa / safe_a**2 + k_bb / n_b**2 - 2.0 * k_ab / (safe_a * n_b)
        return np.where(n_a > 0, value, 0.0)

    def toggled(self, members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(masks with candidate i on the member side, masks with it on the non-member side),
        the rest as in `members`."""
        eye = np.eye(len(members), dtype=bool)
        return members[None, :] | eye, members[None, :] & ~eye

    def converge(self) -> np.ndarray:
        """BlindMI-Diff-w/: move every tentative member whose move raises the MMD, sweep after
        sweep, until none does. Returns the final member mask."""
        members = np.ones(len(self.kernel), dtype=bool)
        while members.any():
            now = self.mmd2(members[None, :])[0]
            moved = members & (self.mmd2(self.toggled(members)[1]) > now)
            if not moved.any():
                break
            members &= ~moved
        return members

    def scores(self) -> np.ndarray:
        """MMD^2 with each candidate on the member side minus with it on the non-member side,
        against the converged split of the others."""
        with_it, without_it = self.toggled(self.converge())
        return self.mmd2(with_it) - self.mmd2(without_it)


class BlindMiAttack(MembershipAttack):
    """Score = MMD^2 with the candidate on the member side minus with it on the non-member
    side of its converged batch; threshold 0. The default kernel is narrow (0.05) because an
    overfitted target puts its members in a tight cluster near (1, 1, 0, 0) of the posterior
    features, close to merely well-classified non-members; the reference set is as large as
    the candidate set (the pool is subsampled to that size)."""

    name: ClassVar[str] = "blindmi"
    requires: ClassVar[frozenset[str]] = frozenset({OUTPUTS})
    parameters: ClassVar[dict[str, Parameter]] = {
        "reference": Parameter("sobel", choices=REFERENCES,
                               help="generated non-members: sobel (edge maps of the "
                                    "candidates), noise (uniform random images) or "
                                    "population (the adversary's own pool)"),
        "batch": Parameter(20, low=2, high=1000, help="candidates compared per batch"),
        "bandwidth": Parameter(0.05, low=1e-3, high=100.0, help="Gaussian kernel width on the "
                                                                 "posterior features, which lie "
                                                                 "in [0, 1]"),
    }

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        self._population: Samples | None = None
        self._seed = 0

    def fit(self, knowledge: AdversaryKnowledge) -> BlindMiAttack:
        """Nothing to learn: BlindMI is blind. Keeps the seed and, for reference=population,
        the pool."""
        if self.params["reference"] == "population" and not knowledge.population:
            raise FedmiaError(f"attack {self.name!r} with reference=population needs the adversary's "
                              "population pool; give it one or use reference=sobel")
        self._population = knowledge.population
        self._seed = knowledge.seed
        self.threshold = 0.0
        return self

    def _reference(self, samples: Samples, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(images, labels) of the non-member reference set: edge maps keep their candidate's
        label, noise images take the candidates' labels shuffled, the pool has its own."""
        kind = self.params["reference"]
        if kind == "sobel":
            return sobel_images(samples.images), samples.labels
        if kind == "noise":
            noise = rng.random(samples.images.shape, dtype=np.float32).astype(samples.images.dtype)
            return noise, rng.permutation(samples.labels)
        rows = np.sort(rng.permutation(len(self._population))[:len(samples)])
        return self._population.images[rows], self._population.labels[rows]

    def score(self, target: TargetView, samples: Samples) -> np.ndarray:
        rng = np.random.default_rng(self._seed)
        bandwidth = self.params["bandwidth"]
        images, labels = self._reference(samples, rng)
        reference = posterior_features(target.logits(images), labels)
        features = posterior_features(target.logits(samples.images), samples.labels)
        total = kernel_total(reference, bandwidth)
        scores = np.zeros(len(samples))
        batches = max(1, round(len(samples) / self.params["batch"]))
        for rows in np.array_split(rng.permutation(len(samples)), batches):
            scores[rows] = BatchSplit(features[rows], reference, total, bandwidth).scores()
        return scores
