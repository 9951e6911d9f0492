"""Local defenses, by name. Each module holds one defense; `DEFENSES` is the registry the CLI
and config files use. `a+b` composes defenses that fill different parts of the local loop
(see `recipe`), e.g. `label-smoothing+dpsgd`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from fedmia.defenses.advreg import AdversarialRegularization
from fedmia.defenses.base import ClientData, Defense, PrepareContext, RoundContext, RoundReport
from fedmia.defenses.cache import PreparationCache, PreparationRecord
from fedmia.defenses.recipe import RecipeDefense, train_recipe_round
from fedmia.defenses.decoy import Decoy
from fedmia.defenses.diffusion_mixup import DiffusionMixup
from fedmia.defenses.distill import Distill
from fedmia.defenses.dpsgd import DPSGD
from fedmia.defenses.dropout import Dropout
from fedmia.defenses.early_stopping import EarlyStopping
from fedmia.defenses.label_smoothing import LabelSmoothing
from fedmia.defenses.ladp import LayeredAdaptiveDP
from fedmia.defenses.mixup import Mixup
from fedmia.defenses.mixup_mmd import MixupMMD
from fedmia.defenses.none import NoDefense
from fedmia.defenses.relaxloss import RelaxLoss
from fedmia.defenses.weight_decay import WeightDecay
from fedmia.errors import FedmiaError

DEFENSES: dict[str, type[Defense]] = {cls.name: cls for cls in (
    NoDefense, DPSGD, LayeredAdaptiveDP, Mixup, LabelSmoothing, Dropout, WeightDecay, EarlyStopping,
    RelaxLoss, AdversarialRegularization, MixupMMD, Distill, DiffusionMixup, Decoy)}


class Composition(Defense):
    """Several defenses, each filling its own parts of one local loop."""

    def __init__(self, parts: tuple[Defense, ...]) -> None:
        self.parts = parts
        self.name = "+".join(part.name for part in parts)

    @property
    def prepares(self) -> bool:  # type: ignore[override]
        return any(part.prepares for part in self.parts)

    @property
    def needs_public_pool(self) -> bool:  # type: ignore[override]
        return any(part.needs_public_pool for part in self.parts)

    def prepare(self, data: ClientData, setup: PrepareContext) -> list[PreparationRecord]:
        return [record for part in self.parts for record in part.prepare(data, setup)]

    def train_round(self, model: nn.Module, data: ClientData, context: RoundContext) -> RoundReport:
        return train_recipe_round(self.parts, model, data, context)

    def state_dict(self) -> dict[str, Any]:
        return {part.name: part.state_dict() for part in self.parts}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for part in self.parts:
            part.load_state_dict(state[part.name])


@dataclass(frozen=True)
class DefenseSpec:
    """A defense name (or `a+b` composition) and its parameters, as written in a config file.
    In a composition each parameter goes to the part that takes it; a name two parts take is
    written as a table under the part's name (`relaxloss = {alpha = 1.0}`)."""

    name: str = "none"
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def part_names(self) -> list[str]:
        if not isinstance(self.name, str):
            raise FedmiaError(f"a defense is named by a text, got {self.name!r}")
        names = self.name.split("+")
        for name in names:
            if name not in DEFENSES:
                raise FedmiaError(f"unknown defense {name!r}; choose one of {', '.join(DEFENSES)} "
                                  "(or combine them with +)")
        if len(names) > 1 and "none" in names:
            raise FedmiaError(f"defense {self.name!r}: 'none' cannot be combined; leave it out")
        if len(set(names)) != len(names):
            raise FedmiaError(f"defense {self.name!r} names a part twice")
        return names

    def build(self) -> Defense:
        """The defense, its parameter names checked first (`Defense.check_params`), then their
        values by the defense itself."""
        names = self.part_names
        routed = route_params(self.name, names, self.params)
        parts = []
        for name in names:
            DEFENSES[name].check_params(routed[name])
            parts.append(DEFENSES[name](**routed[name]))
        return parts[0] if len(parts) == 1 else Composition(tuple(parts))

    @property
    def needs_dp_compatible_model(self) -> bool:
        try:
            return any(DEFENSES[name].needs_dp_compatible_model for name in self.part_names)
        except FedmiaError:
            return False


def route_params(spec: str, names: list[str], params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each parameter to the part that takes it (see `DefenseSpec`)."""
    routed: dict[str, dict[str, Any]] = {name: {} for name in names}
    for key, value in params.items():
        if key in routed and len(names) > 1:
            if not isinstance(value, dict):
                raise FedmiaError(f"defense {spec!r}: {key} must be a table of {key}'s parameters")
            routed[key].update(value)
            continue
        takers = [name for name in names if key in DEFENSES[name].parameters()]
        if len(takers) > 1:
            raise FedmiaError(f"defense {spec!r}: parameter {key} is taken by {' and '.join(takers)}; "
                              f"write it under the part's name, e.g. {takers[0]} = {{{key} = ...}}")
        routed[takers[0] if takers else names[0]][key] = value
    return routed


__all__ = [
    "DEFENSES",
    "DPSGD",
    "LayeredAdaptiveDP",
    "ClientData",
    "Composition",
    "Defense",
    "DefenseSpec",
    "PrepareContext",
    "PreparationCache",
    "RecipeDefense",
    "NoDefense",
    "RoundContext",
    "RoundReport",
]
