"""`early-stopping`: the client stops training once it has run `stop_epoch` local epochs in
all, over every round (the federated form of seed 000's sweep of the stop epoch, 5 to 125 of
200). A round past that is not trained and its upload does not count, as with a spent DP budget."""

from __future__ import annotations

from typing import Any

from fedmia.defenses.base import ClientData, RoundContext, check_param
from fedmia.defenses.recipe import Recipe, RecipeDefense
from fedmia.errors import FedmiaError


class EarlyStopping(RecipeDefense):
    name = "early-stopping"

    def __init__(self, stop_epoch: int = 5) -> None:
        value = check_param("stop_epoch", stop_epoch, 1, 1_000_000, defense=self.name)
        if not value.is_integer():
            raise FedmiaError(f"defense 'early-stopping': stop_epoch={stop_epoch} must be a whole number of epochs")
        self.stop_epoch = int(value)
        self.epochs_done = 0

    def fill(self, recipe: Recipe, data: ClientData, context: RoundContext) -> None:
        recipe.claim("schedule", self.name)
        epochs = min(context.plan.local_epochs, self.stop_epoch - self.epochs_done)
        if epochs <= 0:
            recipe.skip = f"early stopping: {self.epochs_done} local epochs done of {self.stop_epoch}; not training"
            return
        recipe.plan_changes["local_epochs"] = epochs
        self.epochs_done += epochs

    def state_dict(self) -> dict[str, Any]:
        return {"epochs_done": self.epochs_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epochs_done = int(state["epochs_done"])
