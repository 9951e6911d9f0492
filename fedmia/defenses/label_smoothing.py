"""`label-smoothing` (Szegedy et al. 2016): the targets give `smoothing` of their mass to all
classes evenly, so the model is never pushed to full confidence on a record, which blunts
confidence- and loss-based attacks. Seed 000 sweeps 0.1-0.5; seed 002 uses 0.1."""

from __future__ import annotations

import torch
from torch import nn

from fedmia.defenses.base import ClientData, RoundContext, check_param
from fedmia.defenses.recipe import Objective, Recipe, RecipeDefense


class SmoothedCrossEntropy(Objective):
    name = "label-smoothing"

    def __init__(self, smoothing: float) -> None:
        self.smoothing = smoothing

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, targets, reduction="none", label_smoothing=self.smoothing)

    def batch_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, targets, label_smoothing=self.smoothing)


class LabelSmoothing(RecipeDefense):
    name = "label-smoothing"

    def __init__(self, smoothing: float = 0.1) -> None:
        self.smoothing = check_param("smoothing", smoothing, 0.0, 0.99, defense=self.name)

    def fill(self, recipe: Recipe, data: ClientData, context: RoundContext) -> None:
        recipe.claim("objective", self.name)
        recipe.objective = SmoothedCrossEntropy(self.smoothing)
