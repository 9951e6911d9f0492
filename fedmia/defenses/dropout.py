"""`dropout` (Srivastava et al. 2014): while the client trains, the input of every linear layer
is dropped with probability p. FedAvg needs one architecture for every client, so dropout is a
training-time hook on the shared model rather than a model variant with extra modules: the
parameters, the upload and evaluation (eval mode, no dropout) are those of the shared model.
Seed 000 sweeps p over 0.1-0.5; seed 002 uses 0.5."""

from __future__ import annotations

from torch import nn
from torch.utils.hooks import RemovableHandle

from fedmia.defenses.base import ClientData, RoundContext, check_param
from fedmia.defenses.recipe import Recipe, RecipeDefense


def linear_input_dropout(p: float):
    """A model hook dropping each linear layer's input in training mode."""
    def drop(module: nn.Module, args: tuple) -> tuple:
        return (nn.functional.dropout(args[0], p, module.training), *args[1:])

    def install(model: nn.Module) -> list[RemovableHandle]:
        return [layer.register_forward_pre_hook(drop) for layer in model.modules() if isinstance(layer, nn.Linear)]

    return install


class Dropout(RecipeDefense):
    name = "dropout"

    def __init__(self, p: float = 0.5) -> None:
        self.p = check_param("p", p, 0.0, 0.95, defense=self.name)

    def fill(self, recipe: Recipe, data: ClientData, context: RoundContext) -> None:
        recipe.claim("model", self.name)
        recipe.model_hooks.append(linear_input_dropout(self.p))
