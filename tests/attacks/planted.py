"""Planted membership for the attack tests: small cnns overfitted on known digits records, and
how well an attack separates them."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from fedmia.attacks import MembershipAttack, TargetView
from fedmia.metrics import membership_metrics
from fedmia.models import build_model
from fedmia.training import TrainingPlan, train_epochs


def overfitted_cnn(digits: Any, indices: np.ndarray, seed: int, epochs: int = 40) -> nn.Module:
    """The 8x8 digits cnn trained for `epochs` on `indices`: it memorizes them."""
    model = build_model("cnn", (1, 8, 8), 10, seed=seed)
    train_epochs(model, digits.images[indices], digits.labels[indices],
                 TrainingPlan(batch_size=16, lr=0.05), seed, epochs=epochs)
    return model


def auc_and_accuracy(attack: MembershipAttack, scenario: Any) -> tuple[float, float]:
    """(AUC, accuracy of the fitted threshold's decisions) of `attack` fit on
    `scenario.knowledge` and scored against `scenario.target` on `scenario.candidates`."""
    attack.fit(scenario.knowledge)
    scores = attack.score(TargetView(scenario.target), scenario.candidates)
    assert np.all(np.isfinite(scores))
    accuracy = float((attack.decide(scores) == scenario.membership.astype(bool)).mean())
    return membership_metrics(scores, scenario.membership, 1e-3).auc, accuracy
