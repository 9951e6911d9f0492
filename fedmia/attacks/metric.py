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
from scipy.special import log_softmax, logsumexp

from fedmia.attacks.base import (
    LABELS,
    AdversaryKnowledge,
    MembershipAttack,
    Samples,
    TargetView,
    best_threshold,
)


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

    def score(self, target: TargetView, samples: Samples) -> np.ndarray:
        return self.signal(target.logits(samples.images), samples.labels)


def log_probs(logits: np.ndarray) -> np.ndarray:
    return log_softmax(logits, axis=1)


def log_odds(logits: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """log(p_c / (1 - p_c)) = z_c - logsumexp_{j != c} z_j, for one class c per row. Unlike
    log_softmax it keeps its precision when p_c rounds to 1 (margins above ~37 nats), where the
    most member-like samples would otherwise all tie."""
    rows = np.arange(len(classes))
    logits = np.asarray(logits, dtype=np.float64)
    others = logits.copy()
    others[rows, classes] = -np.inf
    return logits[rows, classes] - logsumexp(others, axis=1)


def log_prob_of(logits: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """log p_c for one class per row, exact also where p_c rounds to 1."""
    return -np.logaddexp(0.0, -log_odds(logits, classes))


def _log_one_minus_probs(logits: np.ndarray) -> np.ndarray:
    """log(1 - p_i) for every class without cancellation: every class but the top one has
    p_i <= 1/2, where log1p(-p_i) is exact; the top one comes from its log-odds."""
    rows, top = np.arange(len(logits)), logits.argmax(axis=1)
    probs = np.exp(log_probs(logits))
    probs[rows, top] = 0.0
    result = np.log1p(-probs)
    result[rows, top] = -np.logaddexp(0.0, log_odds(logits, top))
    return result


class LossAttack(MetricAttack):
    name: ClassVar[str] = "loss"

    @staticmethod
    def signal(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Negative cross-entropy loss: members are fitted better."""
        return log_prob_of(logits, labels)


class ConfidenceAttack(MetricAttack):
    name: ClassVar[str] = "confidence"

    @staticmethod
    def signal(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Largest posterior, label-free."""
        return np.exp(log_probs(logits)).max(axis=1)


class EntropyAttack(MetricAttack):
    name: ClassVar[str] = "entropy"

    @staticmethod
    def signal(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Negative prediction entropy: members get sharper predictions."""
        logp = log_probs(logits)
        return (np.exp(logp) * logp).sum(axis=1)


class ModifiedEntropyAttack(MetricAttack):
    name: ClassVar[str] = "modified-entropy"

    @staticmethod
    def signal(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Negative Mentr (Song & Mittal): entropy that also uses the true label, so confident
        wrong predictions count against membership.
        Mentr = -(1 - p_y) log p_y - sum_{i != y} p_i log(1 - p_i)."""
        rows = np.arange(len(labels))
        log_one_minus = _log_one_minus_probs(logits)
        true_term = -np.exp(log_one_minus[rows, labels]) * log_prob_of(logits, labels)
        other_probs = np.exp(log_probs(logits))
        other_probs[rows, labels] = 0.0
        others = -(other_probs * log_one_minus).sum(axis=1)
        return -(true_term + others)


class CorrectnessAttack(MetricAttack):
    name: ClassVar[str] = "correctness"
    requires: ClassVar[frozenset[str]] = frozenset({LABELS})

    def score(self, target: TargetView, samples: Samples) -> np.ndarray:
        """Needs the predicted label only, so it runs against a label-only querier too."""
        return (target.predicted_labels(samples.images) == samples.labels).astype(np.float64)

    @staticmethod
    def signal(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """1 when the target classifies the sample correctly, else 0."""
        return (logits.argmax(axis=1) == labels).astype(np.float64)


METRIC_ATTACKS = (LossAttack, ConfidenceAttack, EntropyAttack, ModifiedEntropyAttack, CorrectnessAttack)
