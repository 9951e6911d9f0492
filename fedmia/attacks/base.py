"""The interface every membership-inference attack implements.

An attack is `fit` on the adversary's knowledge only (models it trained itself on its
population pool, reference models, its own data, and what its threat model lets it observe),
then `score`s candidate samples against a target: one score per sample, higher = more likely
member (PROTOCOL.md). The fitted threshold turns scores into decisions the adversary would act
on.

What an attack may do with a target is gated by access (`TargetView`): an attack declares the
accesses it `requires`, and the adversary layer refuses up front to run it where its threat
model does not grant them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from scipy.special import log_softmax
from sklearn.metrics import roc_curve
from torch import nn

from fedmia.errors import FedmiaError
from fedmia.training import TrainingPlan, predict_logits

#: Predicted labels only (label-only attacks).
LABELS = "labels"
#: Output scores: full logits, or top-k posteriors where the querier's granularity says so.
OUTPUTS = "outputs"
#: The weights: per-sample gradients, activations.
WHITE_BOX = "white-box"
#: One model per round (with the model each round started from).
TRAJECTORY = "trajectory"
#: The other clients' uploads of the target's rounds (the server's view of a client).
PEER_UPLOADS = "peer-uploads"
ACCESSES = (LABELS, OUTPUTS, WHITE_BOX, TRAJECTORY, PEER_UPLOADS)


@dataclass(frozen=True)
class Samples:
    """Records as arrays, with their dataset indices (which reference models trained on which
    record is known by index)."""

    images: np.ndarray
    labels: np.ndarray
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, rows: np.ndarray) -> Samples:
        return Samples(self.images[rows], self.labels[rows], self.indices[rows])


@dataclass(frozen=True)
class ShadowObservation:
    """Outputs of a model the adversary trained itself, on samples whose membership it knows."""

    logits: np.ndarray
    labels: np.ndarray
    membership: np.ndarray


@dataclass(frozen=True)
class ReferenceModel:
    """A model the adversary trained the way the target was trained, on the records whose
    dataset indices are `members` (sorted)."""

    model: nn.Module
    members: np.ndarray

    def trained_on(self, indices: np.ndarray) -> np.ndarray:
        """Per index: did this reference model train on it?"""
        return np.isin(indices, self.members)


@dataclass(frozen=True)
class RoundView:
    """One round of the target as the adversary saw it: the model the round started from, the
    target's model after it, and (server only) the other clients' uploads of that round."""

    server_round: int
    start: nn.Module
    model: nn.Module
    others: tuple[nn.Module, ...] = ()


@dataclass(frozen=True)
class AdversaryKnowledge:
    """Everything an attack may calibrate on. Never the target's membership labels.

    `shadows` are labelled outputs of the adversary's own models (for thresholds and attack
    classifiers); `references` are its reference models (LiRA, RMIA); `population` is its own
    data pool; `own_data` are records it knows are members (a malicious client's data).
    `plan` is how the target was trained, for attacks that train models of their own."""

    num_classes: int
    shadows: tuple[ShadowObservation, ...] = ()
    references: tuple[ReferenceModel, ...] = ()
    population: Samples | None = None
    own_data: Samples | None = None
    plan: TrainingPlan = field(default_factory=TrainingPlan)
    seed: int = 0


@dataclass(frozen=True)
class OutputGranularity:
    """What a query returns: every logit (`top_k` None), the k largest posteriors, or nothing
    but the label (`label_only`)."""

    top_k: int | None = None
    label_only: bool = False

    @classmethod
    def parse(cls, text: str) -> OutputGranularity:
        """`logits`, `top-k:N` or `label`."""
        if text == "logits":
            return cls()
        if text == "label":
            return cls(label_only=True)
        if text.startswith("top-k:") and text[6:].isdigit() and int(text[6:]) >= 1:
            return cls(top_k=int(text[6:]))
        raise FedmiaError(f"querier output {text!r} is not one of logits, top-k:N (N >= 1), label; "
                          "fix --querier-output")

    def reveal(self, logits: np.ndarray) -> np.ndarray:
        """What the querier sees, as logits: the top-k posteriors exactly, the rest of the
        probability mass spread evenly over the hidden classes (softmax gives them back)."""
        if self.top_k is None or self.top_k >= logits.shape[1]:
            return logits
        probs = np.exp(log_softmax(logits, axis=1))
        order = np.argsort(-probs, axis=1, kind="stable")
        kept, hidden = order[:, :self.top_k], order[:, self.top_k:]
        rows = np.arange(len(logits))[:, None]
        rest = 1.0 - (probs.sum(axis=1) - probs[rows, hidden].sum(axis=1))
        # The average of the hidden probabilities never exceeds the smallest kept one; clamping
        # keeps rounding from lifting a hidden class above the label when all classes tie.
        spread = np.minimum(np.maximum(rest, 1e-300) / hidden.shape[1], probs[rows, kept].min(axis=1))
        probs[rows, hidden] = spread[:, None]
        return np.log(np.maximum(probs, 1e-300))


#: How many recent query arrays a TargetView keeps the outputs of: attacks query the same
#: candidates a few times in a row, while label-only attacks send hundreds of new arrays.
CACHED_QUERIES = 4


class TargetView:
    """What the adversary may do with one target model. Outputs of the last few input arrays
    are kept (`CACHED_QUERIES`); an access the adversary was not granted raises (a bug: the
    adversary layer checks every attack's requirements before it runs)."""

    def __init__(self, model: nn.Module, access: frozenset[str] = frozenset(ACCESSES), *,
                 granularity: OutputGranularity = OutputGranularity(),
                 rounds: tuple[RoundView, ...] = (), device: str = "cpu",
                 release: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        self._model = model
        self.access = access
        self.granularity = granularity
        #: The release defense's transform (fedmia.release) every answered query goes through.
        self.release = release
        self._rounds = rounds
        self.device = device
        self._cache: list[tuple[np.ndarray, np.ndarray]] = []

    def _require(self, access: str) -> None:
        if access not in self.access:
            raise PermissionError(f"this adversary has no {access} access to the target")

    def _raw_logits(self, images: np.ndarray) -> np.ndarray:
        for queried, logits in self._cache:
            if queried is images:
                return logits
        logits = predict_logits(self._model, images, self.device)
        self._cache = [(images, logits), *self._cache[:CACHED_QUERIES - 1]]
        return logits

    def logits(self, images: np.ndarray) -> np.ndarray:
        """The target's outputs after its release defense (if any), at the adversary's
        granularity, as logits."""
        self._require(OUTPUTS)
        if self.granularity.label_only:
            raise PermissionError("this adversary sees labels only")
        logits = self._raw_logits(images)
        return self.granularity.reveal(logits if self.release is None else self.release(logits))

    def predicted_labels(self, images: np.ndarray) -> np.ndarray:
        """The raw model's labels: a release defense never changes them."""
        if LABELS not in self.access:
            self._require(OUTPUTS)
        return self._raw_logits(images).argmax(axis=1)

    @property
    def model(self) -> nn.Module:
        self._require(WHITE_BOX)
        return self._model

    @property
    def rounds(self) -> tuple[RoundView, ...]:
        self._require(TRAJECTORY)
        return self._rounds


def best_threshold(scores: np.ndarray, membership: np.ndarray) -> float:
    """The threshold (predict member when score >= t) with the highest balanced accuracy, read
    off the ROC in O(n log n): shadow sets hold thousands of samples, too many for comparing
    every score with every candidate. Ties go to the highest such threshold."""
    fpr, tpr, thresholds = roc_curve(membership, scores, drop_intermediate=False)
    # The first ROC point is sklearn's +inf threshold, which flags no one: not a usable choice.
    best = 1 + int(np.argmax(tpr[1:] - fpr[1:]))
    return float(thresholds[best])


@dataclass(frozen=True)
class Parameter:
    """One parameter an attack takes from its spec (`lira:refs=16`): default and valid range."""

    default: Any
    low: float | None = None
    high: float | None = None
    help: str = ""
    #: The values a text parameter may take (None: any).
    choices: tuple[str, ...] | None = None

    def check(self, owner: str, key: str, value: Any, what: str = "attack") -> Any:
        """`value` for parameter `key` of `owner` (an attack, or the `what` named)."""
        kind = type(self.default)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not kind:
            raise FedmiaError(f"{what} {owner!r} parameter {key} must be a {kind.__name__}, got {value!r}")
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise FedmiaError(f"{what} {owner!r} parameter {key}={value!r} is outside "
                              f"[{self.low}, {self.high}]; pick a value in that range")
        if self.choices is not None and value not in self.choices:
            raise FedmiaError(f"{what} {owner!r} parameter {key}={value!r} is not one of "
                              f"{', '.join(self.choices)}; pick one of those")
        return value


def checked_params(owner: str, accepted: dict[str, Parameter], given: dict[str, Any],
                   what: str = "attack") -> dict[str, Any]:
    """Every accepted parameter of `owner`, from `given` or its default; an unknown key or a
    value out of range is a one-line error."""
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        names = ", ".join(accepted) or "none"
        raise FedmiaError(f"{what} {owner!r} has no parameter {unknown[0]!r} (accepted: {names})")
    return {key: spec.check(owner, key, given.get(key, spec.default), what) for key, spec in accepted.items()}


@dataclass(frozen=True)
class ReferenceRequest:
    """Reference models an attack needs: how many, and whether online (the candidates are IN
    for half of them) or offline (trained on the population only)."""

    count: int
    online: bool


class MembershipAttack(ABC):
    """One attack: parameters checked at construction, fit on the adversary's knowledge, then
    score target samples."""

    name: ClassVar[str]
    #: The accesses to the target the attack needs (see ACCESSES).
    requires: ClassVar[frozenset[str]] = frozenset({OUTPUTS})
    #: Parameters it accepts from its spec, by key.
    parameters: ClassVar[dict[str, Parameter]] = {}

    def __init__(self, **params: Any) -> None:
        self.params = checked_params(self.name, self.parameters, params)
        self.threshold: float | None = None

    def references_needed(self) -> ReferenceRequest | None:
        """The reference models `fit` expects in the knowledge; None for none."""
        return None

    @abstractmethod
    def fit(self, knowledge: AdversaryKnowledge) -> MembershipAttack:
        """Calibrate on the adversary's own models and data; returns self."""

    @abstractmethod
    def score(self, target: TargetView, samples: Samples) -> np.ndarray:
        """One membership score per sample, higher = more likely member."""

    def decide(self, scores: np.ndarray) -> np.ndarray:
        """Member decisions at the fitted threshold."""
        if self.threshold is None:
            raise RuntimeError(f"attack {self.name!r} must be fit before it decides")
        return scores >= self.threshold
