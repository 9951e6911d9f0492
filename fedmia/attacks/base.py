"""The interface every membership-inference attack implements.

An attack is `fit` on the adversary's knowledge only (models it trained itself on its
population pool, and what its threat model lets it observe), then `score`s samples against a
target model: one score per sample, higher = more likely member (PROTOCOL.md). The fitted
threshold turns scores into decisions the adversary would act on.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from sklearn.metrics import roc_curve
from torch import nn

from fedmia.training import predict_logits


@dataclass(frozen=True)
class ShadowObservation:
    """Outputs of a model the adversary trained itself, on samples whose membership it knows."""

    logits: np.ndarray
    labels: np.ndarray
    membership: np.ndarray


@dataclass(frozen=True)
class AdversaryKnowledge:
    """Everything an attack may calibrate on. Never the target's membership labels."""

    shadows: tuple[ShadowObservation, ...]
    num_classes: int


class TargetModel:
    """Query access to the attacked model; logits are computed once per input array."""

    def __init__(self, model: nn.Module, device: str = "cpu") -> None:
        self.model = model
        self.device = device
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def logits(self, images: np.ndarray) -> np.ndarray:
        cached = self._cache.get(id(images))
        if cached is None or cached[0] is not images:
            cached = (images, predict_logits(self.model, images, self.device))
            self._cache[id(images)] = cached
        return cached[1]


def best_threshold(scores: np.ndarray, membership: np.ndarray) -> float:
    """The threshold (predict member when score >= t) with the highest balanced accuracy, read
    off the ROC in O(n log n): shadow sets hold thousands of samples, too many for comparing
    every score with every candidate. Ties go to the highest such threshold."""
    fpr, tpr, thresholds = roc_curve(membership, scores, drop_intermediate=False)
    # The first ROC point is sklearn's +inf threshold, which flags no one: not a usable choice.
    best = 1 + int(np.argmax(tpr[1:] - fpr[1:]))
    return float(thresholds[best])


class MembershipAttack(ABC):
    """One attack: fit on the adversary's knowledge, then score target samples."""

    name: ClassVar[str]
    #: What the attack needs of the target: "black-box" (outputs) or "white-box" (weights).
    access: ClassVar[str] = "black-box"

    def __init__(self) -> None:
        self.threshold: float | None = None

    @abstractmethod
    def fit(self, knowledge: AdversaryKnowledge) -> MembershipAttack:
        """Calibrate on the adversary's own models and data; returns self."""

    @abstractmethod
    def score(self, target: TargetModel, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """One membership score per sample, higher = more likely member."""

    def decide(self, scores: np.ndarray) -> np.ndarray:
        """Member decisions at the fitted threshold."""
        if self.threshold is None:
            raise RuntimeError(f"attack {self.name!r} must be fit before it decides")
        return scores >= self.threshold
