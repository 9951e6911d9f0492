"""`relaxloss` (Chen, Yu & Fritz 2022): train to a target loss alpha instead of to zero, so
members' losses stay near those of non-members. While the batch loss is above alpha, descend;
below it, alternate between gradient ascent towards alpha (minimizing |L - alpha|) and
posterior flattening (cross-entropy against targets that keep the model's own confidence on
the true class and spread the rest evenly over the others). The paper alternates by epoch;
here the alternation is per step, since a step is the unit the loop gives an objective. The
loss couples a batch through its mean, so it does not compose with per-sample clipping.
Seed 000 sweeps alpha over 0.1-2.0."""

from __future__ import annotations

import torch
from torch import nn

from fedmia.defenses.base import ClientData, RoundContext, check_param
from fedmia.defenses.recipe import Objective, Recipe, RecipeDefense


def true_class(targets: torch.Tensor) -> torch.Tensor:
    return targets if targets.dim() == 1 else targets.argmax(1)


def flattened_targets(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The model's confidence on the true class kept, the rest spread evenly (no gradient)."""
    probabilities = nn.functional.softmax(logits.detach(), dim=1)
    kept = probabilities.gather(1, labels[:, None])
    spread = (1 - kept) / (logits.shape[1] - 1)
    return spread.expand_as(probabilities).scatter(1, labels[:, None], kept)


class RelaxedLoss(Objective):
    name = "relaxloss"
    decomposes = False

    def __init__(self, alpha: float) -> None:
        self.alpha = alpha
        self.relaxed_steps = 0

    def batch_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = nn.functional.cross_entropy(logits, targets)
        if float(loss.detach()) >= self.alpha:
            return loss
        self.relaxed_steps += 1
        if self.relaxed_steps % 2 == 1:
            return (loss - self.alpha).abs()
        return nn.functional.cross_entropy(logits, flattened_targets(logits, true_class(targets)))


class RelaxLoss(RecipeDefense):
    name = "relaxloss"

    def __init__(self, alpha: float = 1.0) -> None:
        self.alpha = check_param("alpha", alpha, 1e-3, 20.0, defense=self.name)

    def fill(self, recipe: Recipe, data: ClientData, context: RoundContext) -> None:
        recipe.claim("objective", self.name)
        recipe.objective = RelaxedLoss(self.alpha)
