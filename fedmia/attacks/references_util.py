"""What the reference-model attacks (LiRA, RMIA) share: the augmented queries every sample is
asked as, the reference models' outputs on them (computed once per sample set), and the
threshold found by letting each reference model stand in for the target.

A member was fitted under the augmentations the model trained with, so asking the same sample
several ways (mirror, one-pixel shifts) and combining the answers lowers the variance of the
membership signal (Carlini et al. 2022, section VI). Target and references are asked exactly
the same queries, so their answers are comparable.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fedmia.attacks.base import (
    AdversaryKnowledge,
    MembershipAttack,
    Parameter,
    ReferenceModel,
    ReferenceRequest,
    Samples,
    TargetView,
    best_threshold,
)
from fedmia.attacks.label_only import SHIFTS, augment
from fedmia.attacks.metric import log_odds
from fedmia.errors import FedmiaError
from fedmia.training import predict_logits

#: (mirrored?, shift) of each query in order: the sample, its mirror, then each one-pixel shift
#: (label_only's: along an axis, then diagonal) of the sample and of the mirror.
QUERIES = tuple((mirror, step) for step in SHIFTS for mirror in (False, True))
MAX_QUERIES = len(QUERIES)

#: Default 1: fedmia's clients train without augmentation, so a mirrored or shifted query is
#: mostly noise (on digits it cut offline LiRA's AUC from 0.85 to 0.70); raise it for targets
#: trained with flips and shifts.
AUGMENT = Parameter(1, 1, MAX_QUERIES, help="queries per sample: 1 the sample, 2 + its mirror, "
                    "more + one-pixel shifts of both")


def queries(images: np.ndarray, count: int) -> list[np.ndarray]:
    """The first `count` QUERIES of every image. The first is `images` itself, so a target that
    already answered those images (another attack) answers from its cache."""
    return [images if (mirror, step) == QUERIES[0] else np.ascontiguousarray(augment(images, mirror, step))
            for mirror, step in QUERIES[:count]]


def true_label_log_odds(logits_per_query: list[np.ndarray], labels: np.ndarray) -> np.ndarray:
    """(queries, samples) log(p_y / (1 - p_y)), the logit-scaled confidence: close to Gaussian
    over models where p_y itself piles up at 0 and 1."""
    return np.stack([log_odds(logits, labels) for logits in logits_per_query])


def target_log_odds(target: TargetView, samples: Samples, count: int) -> np.ndarray:
    """(queries, samples) log-odds of the true label under the target, on `count` queries."""
    asked = queries(samples.images, count)
    return true_label_log_odds([target.logits(images) for images in asked], samples.labels)


class ReferenceSignals:
    """The reference models' log-odds of the true label on a sample set's queries, each model
    asked once per image array (kept by identity, as TargetView does): score and the threshold
    calibration read the same population, and several targets are scored on the same
    candidates."""

    def __init__(self, references: tuple[ReferenceModel, ...], count: int, device: str) -> None:
        self.references = references
        self.count = count
        self.device = device
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def log_odds(self, samples: Samples) -> np.ndarray:
        """(references, queries, samples) log-odds of the true label."""
        cached = self._cache.get(id(samples.images))
        if cached is None or cached[0] is not samples.images:
            asked = queries(samples.images, self.count)
            per_reference = [[predict_logits(ref.model, images, self.device) for images in asked]
                             for ref in self.references]
            signals = np.stack([true_label_log_odds(logits, samples.labels) for logits in per_reference])
            cached = (samples.images, signals)
            self._cache[id(samples.images)] = cached
        return cached[1]

    def membership(self, samples: Samples) -> np.ndarray:
        """(references, samples): did each reference train on each sample?"""
        return np.stack([ref.trained_on(samples.indices) for ref in self.references])


class ReferenceAttack(MembershipAttack):
    """An attack that reads reference models: `refs` of them, `online` or not, asked `augment`
    queries per sample (parameters every subclass declares)."""

    signals: ReferenceSignals | None = None

    def references_needed(self) -> ReferenceRequest:
        return ReferenceRequest(self.params["refs"], self.params["online"])

    def read_references(self, knowledge: AdversaryKnowledge) -> ReferenceSignals:
        """Keep the knowledge's reference models, asked on the device the target trained on."""
        if not knowledge.references:
            raise FedmiaError(f"attack {self.name!r} was given no reference models; it needs at least "
                              "1 (its refs parameter), trained the way the target was")
        self.signals = ReferenceSignals(knowledge.references, self.params["augment"], knowledge.plan.device)
        return self.signals

    def fitted_signals(self) -> ReferenceSignals:
        if self.signals is None:
            raise RuntimeError(f"attack {self.name!r} must be fit before it scores")
        return self.signals


def population_sample(population: Samples | None, count: int, seed: int) -> Samples | None:
    """Up to `count` population records, drawn without replacement by `seed`, in population
    order; None without a population."""
    if population is None or len(population) == 0:
        return None
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(population), min(count, len(population)), replace=False))
    return population.take(rows)


StandInScore = Callable[[int, np.ndarray], np.ndarray | None]


def stand_in_threshold(membership: np.ndarray, score: StandInScore) -> float | None:
    """The threshold with the best balanced accuracy when each reference model in turn plays
    the target, scored on records whose membership in it is known (`membership`, references x
    records) with the other references as its references: the attack's score scale is then
    calibrated on models trained exactly like the target, without the target's membership.

    `score(stand_in, others)` returns the stand-in's scores, or None where they are undefined.
    A stand-in whose records are all members or all non-members teaches nothing and is skipped.
    None when no stand-in remains (one reference has no others to play its references)."""
    scores, labels = [], []
    everyone = np.arange(len(membership))
    for stand_in in everyone:
        members = membership[stand_in]
        if len(everyone) < 2 or members.all() or not members.any():
            continue
        found = score(int(stand_in), np.delete(everyone, stand_in))
        if found is not None:
            scores.append(found)
            labels.append(members)
    if not scores:
        return None
    return best_threshold(np.concatenate(scores), np.concatenate(labels).astype(int))
