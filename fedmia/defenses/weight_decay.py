"""`weight-decay`: L2 regularization with weight lambda (SGD's weight decay, which adds
lambda * theta to every gradient), a classic curb on overfitting. Seed 002 uses 0.01. It reads
no record, so it composes with DP-SGD without touching the guarantee."""

from __future__ import annotations

from fedmia.defenses.base import ClientData, RoundContext, check_param
from fedmia.defenses.recipe import Recipe, RecipeDefense


class WeightDecay(RecipeDefense):
    name = "weight-decay"

    def __init__(self, weight: float = 0.01) -> None:
        self.weight = check_param("weight", weight, 0.0, 10.0, defense=self.name)

    def fill(self, recipe: Recipe, data: ClientData, context: RoundContext) -> None:
        recipe.claim("optimizer", self.name)
        recipe.plan_changes["weight_decay"] = self.weight
