"""`mixup` (Zhang et al. 2018): every step trains on convex combinations of pairs of examples
and of their targets, x = lambda x_i + (1 - lambda) x_j, lambda ~ Beta(alpha, alpha), which
smooths the model between records and shrinks the gap membership inference reads. Seed 000
sweeps alpha over 0.1-0.5; seed 002 uses 1.0."""

from __future__ import annotations

import numpy as np
import torch

from fedmia.defenses.base import ClientData, RoundContext, check_param
from fedmia.defenses.recipe import DataSource, Recipe, RecipeDefense
from fedmia.training import Mixer


def mix_pairs(alpha: float) -> Mixer:
    """A mixer pairing each example with a random other one of its batch, one lambda per batch
    (as Zhang et al. do), drawn from the step's seeded generator."""
    def mix(images: torch.Tensor, targets: torch.Tensor,
            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        draw = int(torch.randint(2**62, (1,), generator=generator, device=generator.device))
        weight = float(np.random.default_rng(draw).beta(alpha, alpha))
        partner = torch.randperm(len(images), generator=generator, device=generator.device)
        return (weight * images + (1 - weight) * images[partner],
                weight * targets + (1 - weight) * targets[partner])

    return mix


class MixedData(DataSource):
    """The client's records, each batch mixed."""

    def __init__(self, mixer: Mixer) -> None:
        self.mixer = mixer


class Mixup(RecipeDefense):
    name = "mixup"

    def __init__(self, alpha: float = 1.0) -> None:
        self.alpha = check_param("alpha", alpha, 1e-3, 100.0, defense=self.name)

    def fill(self, recipe: Recipe, data: ClientData, context: RoundContext) -> None:
        recipe.claim("data", self.name)
        recipe.data = MixedData(mix_pairs(self.alpha))
