"""Shadow-model attack with a learned attack classifier (Shokri et al. 2017; ML-Leaks adversary
I, Salem et al. 2019).

The adversary's own shadow models show it what member and non-member outputs look like; a small
neural network learns to tell them apart from the sorted top-3 posteriors (label-free, as in
ML-Leaks) or, with `features=top3-label`, also from the true label's posterior and the label
itself (one-hot). The label-aware variant stands in for Shokri's one attack model per class:
one network conditioned on the class sees every class's shadow samples at once, which matters
when the shadow data holds only a few samples per class.
"""

from __future__ import annotations

import warnings
from typing import ClassVar

import numpy as np
from scipy.special import softmax
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

from fedmia.attacks.base import (
    OUTPUTS,
    AdversaryKnowledge,
    MembershipAttack,
    Parameter,
    Samples,
    TargetView,
)
from fedmia.errors import FedmiaError

FEATURES = ("top3", "top3-label")
TOP = 3


def attack_features(logits: np.ndarray, labels: np.ndarray, kind: str, num_classes: int) -> np.ndarray:
    """One feature row per sample: the top-3 posteriors in decreasing order (zero-padded below
    three classes), then for `top3-label` the true label's posterior and its one-hot label."""
    probs = softmax(np.asarray(logits, dtype=np.float64), axis=1)
    top = -np.sort(-probs, axis=1)[:, :TOP]
    top = np.pad(top, ((0, 0), (0, TOP - top.shape[1])))
    if kind == "top3":
        return top
    rows = np.arange(len(labels))
    return np.hstack([top, probs[rows, labels][:, None], np.eye(num_classes)[labels]])


def member_log_odds(classifier: MLPClassifier, features: np.ndarray) -> np.ndarray:
    """The network's output unit before its logistic: log(P(member) / P(non-member)) (ReLU
    hidden layers; classes_ is [0, 1], so the unit is the member class's). Read off the
    weights because predict_proba rounds to exactly 0 or 1 for the most confident samples,
    which would tie them."""
    hidden = features
    for weights, bias in zip(classifier.coefs_[:-1], classifier.intercepts_[:-1]):
        hidden = np.maximum(hidden @ weights + bias, 0.0)
    return (hidden @ classifier.coefs_[-1] + classifier.intercepts_[-1])[:, 0]


class ShadowNnAttack(MembershipAttack):
    """Score = the attack network's member log-odds minus the shadow data's prior log-odds
    (members/non-members), an estimate of the log-likelihood ratio. Removing the prior keeps
    the imbalance of the shadow data (a client-sized member set, the rest of the pool out) from
    shifting the decision: threshold 0 is the balanced member decision."""

    name: ClassVar[str] = "shadow-nn"
    requires: ClassVar[frozenset[str]] = frozenset({OUTPUTS})
    parameters: ClassVar[dict[str, Parameter]] = {
        "features": Parameter("top3", choices=FEATURES,
                              help="top3 (sorted top-3 posteriors) or top3-label "
                                   "(plus the true label's posterior and the one-hot label)"),
        "hidden": Parameter(64, low=1, high=4096, help="hidden units of the attack network"),
    }

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        self._classifier: MLPClassifier | None = None
        self._prior = 0.0
        self._num_classes = 0

    def _features(self, logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
        return attack_features(logits, labels, self.params["features"], self._num_classes)

    def fit(self, knowledge: AdversaryKnowledge) -> ShadowNnAttack:
        self._num_classes = knowledge.num_classes
        membership = np.concatenate([np.zeros(0, dtype=int),
                                     *(s.membership.astype(int) for s in knowledge.shadows)])
        members = int(membership.sum())
        if members in (0, len(membership)):
            raise FedmiaError(f"attack {self.name!r} needs shadow outputs of both members and non-members "
                              f"(got {members} of {len(membership)}); give the adversary a shadow model")
        features = np.vstack([self._features(s.logits, s.labels) for s in knowledge.shadows])
        self._classifier = MLPClassifier((self.params["hidden"],), activation="relu", solver="lbfgs",
                                         max_iter=1000, random_state=knowledge.seed)
        with warnings.catch_warnings():
            # Stopping at max_iter still leaves a usable (if less sharp) attack network.
            warnings.simplefilter("ignore", ConvergenceWarning)
            self._classifier.fit(features, membership)
        self._prior = float(np.log(members / (len(membership) - members)))
        self.threshold = 0.0
        return self

    def score(self, target: TargetView, samples: Samples) -> np.ndarray:
        if self._classifier is None:
            raise RuntimeError(f"attack {self.name!r} must be fit before it scores")
        features = self._features(target.logits(samples.images), samples.labels)
        return member_log_odds(self._classifier, features) - self._prior
