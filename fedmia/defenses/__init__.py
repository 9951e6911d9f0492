"""Local defenses, by name. Each module holds one defense; `DEFENSES` is the registry the CLI
and config files use."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedmia.defenses.base import ClientData, Defense, RoundContext, RoundReport
from fedmia.defenses.dpsgd import DPSGD
from fedmia.defenses.ladp import LayeredAdaptiveDP
from fedmia.defenses.none import NoDefense
from fedmia.errors import FedmiaError

DEFENSES: dict[str, type[Defense]] = {cls.name: cls for cls in (NoDefense, DPSGD, LayeredAdaptiveDP)}


@dataclass(frozen=True)
class DefenseSpec:
    """A defense name and its parameters, as written in a config file."""

    name: str = "none"
    params: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Defense:
        """The defense, its parameter names checked first (`Defense.check_params`), then their
        values by the defense itself."""
        if not isinstance(self.name, str) or self.name not in DEFENSES:
            raise FedmiaError(f"unknown defense {self.name!r}; choose one of {', '.join(DEFENSES)}")
        defense = DEFENSES[self.name]
        defense.check_params(self.params)
        return defense(**self.params)

    @property
    def needs_dp_compatible_model(self) -> bool:
        return isinstance(self.name, str) and self.name in DEFENSES and DEFENSES[self.name].needs_dp_compatible_model


__all__ = [
    "DEFENSES",
    "DPSGD",
    "LayeredAdaptiveDP",
    "ClientData",
    "Defense",
    "DefenseSpec",
    "NoDefense",
    "RoundContext",
    "RoundReport",
]
