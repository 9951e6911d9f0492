"""Metric attacks: one signal of the target's output per sample, thresholded.

Loss (Yeom et al.), confidence / max posterior (ML-Leaks adversary III), entropy and modified
entropy (Song & Mittal), and correctness. Each signal is oriented so that higher means
"more likely member"; the threshold is the one that best separates the adversary's own shadow
members from shadow non-members.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import numpy as np
from scipy.special import log_softmax

from fedmia.attacks.base import AdversaryKnowledge, MembershipAttack, TargetModel, best_threshold

_TINY = 1e-30


class MetricAttack(MembershipAttack):
    """A threshold on a per-sample signal of the target's logits."""

    @staticmethod
    @abstractmethod
    def signal(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Per-sample signal of the target's logits, higher = more likely member."""

    def fit(self, knowledge: AdversaryKnowledge) -> MetricAttack:
        scores = np.concatenate([self.signal(s.logits, s.labels) for s in knowledge.shadows])
        membership = np.concatenate([s.membership for s in knowledge.shadows])
        self.threshold = best_threshold(scores, membership)
        return self

    def score(self, target: TargetModel, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return self.signal(target.logits(images), labels)


def _log_probs(logits: np.ndarray) -> np.ndarray:
    return log_softmax(logits, axis=1)


class LossAttack(MetricAttack):
    name: ClassVar[str] = "loss"

    @staticmethod
    def signal(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Negative cross-entropy loss: members are fitted better."""
        return _log_probs(logits)[np.arange(len(labels)), labels]


class ConfidenceAttack(MetricAttack):
    name: ClassVar[str] = "confidence"

    @staticmethod
    def signal(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Largest posterior, label-free."""
        return np.exp(_log_probs(logits)).max(axis=1)


class EntropyAttack(MetricAttack):
    name: ClassVar[str] = "entropy"

    @staticmethod
    def signal(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Negative prediction entropy: members get sharper predictions."""
        log_probs = _log_probs(logits)
        return (np.exp(log_probs) * log_probs).sum(axis=1)


class ModifiedEntropyAttack(MetricAttack):
    name: ClassVar[str] = "modified-entropy"

    @staticmethod
    def signal(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Negative Mentr (Song & Mittal): entropy that also uses the true label, so confident
        wrong predictions count against membership."""
        log_probs = _log_probs(logits)
        probs = np.exp(log_probs)
        rows = np.arange(len(labels))
        p_true = probs[rows, labels]
        log_one_minus = np.log(np.clip(1 - probs, _TINY, None))
        others = -(probs * log_one_minus).sum(axis=1) + p_true * log_one_minus[rows, labels]
        true_term = -(1 - p_true) * log_probs[rows, labels]
        return -(true_term + others)


class CorrectnessAttack(MetricAttack):
    name: ClassVar[str] = "correctness"

    @staticmethod
    def signal(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """1 when the target classifies the sample correctly, else 0."""
        return (logits.argmax(axis=1) == labels).astype(np.float64)


METRIC_ATTACKS = (LossAttack, ConfidenceAttack, EntropyAttack, ModifiedEntropyAttack, CorrectnessAttack)
