"""The interface every release defense implements.

A release defense sits between the released model and whoever queries it: it changes what a
query returns (the scores) but never the predicted label, so the model's accuracy is exactly
that of the undefended model. It is `fit` once on what the releasing party knows (the model's
outputs on some of its training records and on records it did not train on), then
`transform`s every answered query's logits. Arrays in, arrays out: no model, no Flower.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
from scipy.special import softmax

from fedmia.attacks.base import Parameter
from fedmia.errors import FedmiaError

#: L1 distance between probability vectors below which a row counts as unchanged: a logit
#: round trip (log of a softmax) moves probabilities by float rounding, not by a defense.
UNCHANGED_L1 = 1e-9


def probability_l1(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """Per row, the L1 distance between the softmax of two logit arrays (in [0, 2])."""
    return np.abs(softmax(after, axis=1) - softmax(before, axis=1)).sum(axis=1)


def keep_labels(raw: np.ndarray, released: np.ndarray) -> np.ndarray:
    """`released` with each row's raw argmax made its strict maximum again where rounding (a
    tie with the top class) moved it, by the smallest float step above the row's maximum:
    the probabilities move by ~1e-16, the label is the raw one."""
    labels = raw.argmax(axis=1)
    moved = np.flatnonzero(released.argmax(axis=1) != labels)
    fixed = released.copy()
    fixed[moved, labels[moved]] = np.nextafter(released[moved].max(axis=1), np.inf)
    return fixed


class ReleaseDefense(ABC):
    """One output-side defense: parameters checked at construction, `fit` on the releasing
    party's member and non-member outputs, then `transform` of every query. Keeps running
    totals of what it did to the answers it released, for `details`."""

    name: ClassVar[str]
    #: Parameters it accepts from its spec (`memguard:epsilon=0.5`), by key.
    parameters: ClassVar[dict[str, Parameter]] = {}
    #: True when `fit` needs outputs on records the model did not train on.
    needs_reference_data: ClassVar[bool] = False

    def __init__(self, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.parameters))
        if unknown:
            accepted = ", ".join(self.parameters) or "none"
            raise FedmiaError(f"release defense {self.name!r} has no parameter {unknown[0]!r} "
                              f"(accepted: {accepted})")
        self.params = {key: spec.check(self.name, key, params.get(key, spec.default), "release defense")
                       for key, spec in self.parameters.items()}
        self._fit_seconds = 0.0
        self._seconds = 0.0
        self._rows = 0
        self._changed = 0
        self._l1_sum = 0.0
        self._l1_max = 0.0

    def fit(self, member_logits: np.ndarray, nonmember_logits: np.ndarray,
            labels_members: np.ndarray, labels_nonmembers: np.ndarray, seed: int) -> None:
        """Learn from the model's logits on records it trained on and records it did not."""
        start = time.perf_counter()
        self._fit(np.asarray(member_logits, dtype=np.float64), np.asarray(nonmember_logits, dtype=np.float64),
                  np.asarray(labels_members), np.asarray(labels_nonmembers), seed)
        self._fit_seconds += time.perf_counter() - start

    def _fit(self, member_logits: np.ndarray, nonmember_logits: np.ndarray,
             labels_members: np.ndarray, labels_nonmembers: np.ndarray, seed: int) -> None:
        """Defenses that learn nothing keep this."""

    @abstractmethod
    def _release(self, logits: np.ndarray) -> np.ndarray:
        """The answer to each row, as logits with the same argmax."""

    def transform(self, logits: np.ndarray) -> np.ndarray:
        """What the querier gets for these raw logits (as logits: their softmax is what it
        sees). Every row keeps its predicted label: a defense that moved one is a bug."""
        start = time.perf_counter()
        raw = np.asarray(logits, dtype=np.float64)
        if raw.ndim != 2 or raw.shape[1] < 1:
            raise ValueError(f"release defense {self.name!r} takes logits of shape (rows, classes), "
                             f"got {raw.shape}")
        released = self._release(raw)
        if released.shape != raw.shape or not np.array_equal(released.argmax(axis=1), raw.argmax(axis=1)):
            raise RuntimeError(f"release defense {self.name!r} changed a predicted label or the shape")
        distortion = probability_l1(raw, released)
        self._rows += len(raw)
        self._changed += int((distortion > UNCHANGED_L1).sum())
        self._l1_sum += float(distortion.sum())
        self._l1_max = max(self._l1_max, float(distortion.max(initial=0.0)))
        self._seconds += time.perf_counter() - start
        return released

    def details(self) -> dict[str, Any]:
        """JSON values for the report: the parameters, and the distortion of every answer
        released so far (L1 between the raw and the released probability vectors)."""
        return {
            "name": self.name,
            "params": dict(self.params),
            "rows": self._rows,
            "changed_fraction": self._changed / self._rows if self._rows else 0.0,
            "mean_l1": self._l1_sum / self._rows if self._rows else 0.0,
            "max_l1": self._l1_max,
            "fit_seconds": self._fit_seconds,
            "transform_seconds": self._seconds,
        }
