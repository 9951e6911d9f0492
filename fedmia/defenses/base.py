"""The interface every local defense implements.

A defense is chosen per client. It is built once from its parameters (checked up front),
`prepare`s before every round (expensive work, such as synthesizing data or training a
teacher, goes through the `PreparationCache`, so only the first call pays for it), then trains
the received global model every round it is selected. Flower rebuilds clients each round, so
all state that must survive a round (an accountant's history, a budget) goes through
`state_dict`/`load_state_dict` as plain JSON values; the caller persists it.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from torch import nn

from fedmia.defenses.cache import PreparationCache, PreparationRecord
from fedmia.errors import FedmiaError
from fedmia.privacy.budget import PrivacySpent
from fedmia.training import TrainingPlan

JSONValue = Any


@dataclass(frozen=True)
class ClientData:
    """What a client may train on: its own members, and the run's public pool (empty unless
    the run sets `public_size`), which every client and the adversary may read."""

    client_id: int
    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    public_images: np.ndarray | None = None
    public_labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def public(self, needed_by: str) -> tuple[np.ndarray, np.ndarray]:
        """The public pool; a defense that needs one names itself in the error."""
        if self.public_images is None or self.public_labels is None or not len(self.public_labels):
            raise FedmiaError(f"defense {needed_by!r} needs a public pool; set public_size "
                              "(--public-size N) to carve one out of the dataset")
        return self.public_images, self.public_labels


@dataclass(frozen=True)
class RoundContext:
    """Where the client is in the federation, so a defense can plan its budget."""

    server_round: int
    total_rounds: int
    plan: TrainingPlan
    seed: int


@dataclass(frozen=True)
class PrepareContext:
    """What preparation may use: the local plan, a seed fixed per client, the cache, and the
    run's architecture with its initial weights (a teacher has the shape of the shared model)."""

    plan: TrainingPlan
    seed: int
    cache: PreparationCache
    new_model: Callable[[], nn.Module]


@dataclass(frozen=True)
class RoundReport:
    """What a client reports after a round. `stopped` means it did not train (budget spent),
    so its upload must not count in the aggregate; `details` holds defense-specific values
    (e.g. a per-layer noise allocation) that go to metrics.jsonl as they are."""

    num_examples: int
    train_loss: float
    train_accuracy: float
    seconds: float
    privacy: PrivacySpent | None = None
    stopped: bool = False
    message: str = ""
    details: dict[str, JSONValue] = field(default_factory=dict)


class Defense(ABC):
    """A local training procedure that protects the client's members."""

    name: ClassVar[str]
    #: True when training needs per-sample gradients, so the model must have no BatchNorm.
    needs_dp_compatible_model: ClassVar[bool] = False

    @classmethod
    def parameters(cls) -> dict[str, inspect.Parameter]:
        """The named parameters of `__init__`: exactly what a config may set for this defense."""
        signature = inspect.signature(cls.__init__)
        return {name: p for name, p in signature.parameters.items()
                if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}

    @classmethod
    def check_params(cls, params: dict[str, Any]) -> None:
        """Unknown and missing parameters, for every defense alike: one line naming the defense,
        the parameter and the accepted ones (a misspelt `epsilom` must not fall through to a
        Python argument error)."""
        accepted = cls.parameters()
        unknown = sorted(set(params) - set(accepted))
        missing = [name for name, p in accepted.items() if p.default is p.empty and name not in params]
        if not unknown and not missing:
            return
        problem = (f"has no parameter {', '.join(map(repr, unknown))}" if unknown
                   else f"needs {', '.join(missing)}")
        listing = ", ".join(name if p.default is p.empty else f"{name} (default {p.default!r})"
                            for name, p in accepted.items())
        takes = f"its parameters are {listing}" if accepted else "it takes no parameters"
        raise FedmiaError(f"defense {cls.name!r} {problem}; {takes}")

    #: True when `prepare` does real work, so a run prepares these clients up front.
    prepares: ClassVar[bool] = False
    #: True when the defense reads the run's public pool (`ClientData.public`).
    needs_public_pool: ClassVar[bool] = False

    def prepare(self, data: ClientData, setup: PrepareContext) -> list[PreparationRecord]:
        """Per-client work before a round (the same `setup.seed` every round, so cached work is
        found again). Returns what was prepared or reused (nothing by default)."""
        return []

    @abstractmethod
    def train_round(self, model: nn.Module, data: ClientData, context: RoundContext) -> RoundReport:
        """Train `model` (the current global model) in place on the client's data."""

    def state_dict(self) -> dict[str, JSONValue]:
        """State to carry to the next round (JSON values only)."""
        return {}

    def load_state_dict(self, state: dict[str, JSONValue]) -> None:
        """Restore what `state_dict` returned last round."""


def check_param(name: str, value: float, low: float, high: float = float("inf"),
                *, defense: str) -> float:
    """Range-check a numeric defense parameter; the error names the parameter and the range."""
    if isinstance(value, bool):
        raise FedmiaError(f"defense {defense!r}: {name}={value!r} is not a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise FedmiaError(f"defense {defense!r}: {name}={value!r} is not a number") from None
    if not low <= number <= high:
        raise FedmiaError(f"defense {defense!r}: {name}={value} is out of range [{low}, {high}]")
    return number


def check_whole(name: str, value: Any, low: int, high: int, *, defense: str) -> int:
    """`check_param` for a count (steps, samples, a class index): a whole number in range."""
    number = check_param(name, value, low, high, defense=defense)
    if not number.is_integer():
        raise FedmiaError(f"defense {defense!r}: {name}={value} must be a whole number")
    return int(number)
