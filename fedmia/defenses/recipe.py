"""Defenses as parts of one local training loop, so that they compose.

A round's local training is made of parts:
- **data**: what each step trains on (the client's records; a private subset plus synthetic
  samples; a public set labeled by a teacher) and whether batches are mixed (mixup);
- **objective**: the loss (cross-entropy, label smoothing, RelaxLoss, adversarial
  regularization, MMD);
- **privatizer**: how gradients become the update (plain SGD, or `dpsgd` / `ladp`);
- and two knobs: hooks on the model while it trains (dropout) and changes to the local plan
  (weight decay, fewer epochs);
- **finishers**: steps on the trained model after the round's training, before upload (decoy's
  fine-tuning against model inversion), run in order.

Each defense fills the parts it is about (`RecipeDefense.fill`); a config's `defense =
"mixup+dpsgd"` fills them in turn, each part at most once. A privatizer's epsilon is a guarantee
for the client only if nothing else read its records: every part that does (a diffusion model
or teacher trained without DP, mixup pairing two records in one example, a finisher reading
them) says so, and the round report lists it under `details["epsilon_not_covering"]`.
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from fedmia.defenses.base import ClientData, Defense, RoundContext, RoundReport
from fedmia.errors import FedmiaError
from fedmia.training import Mixer, train_epochs

if TYPE_CHECKING:
    from fedmia.defenses.private import PrivateDefense

ModelHook = Callable[[nn.Module], list[RemovableHandle]]


@dataclass(frozen=True)
class TrainingSet:
    """What a round's steps draw from. `targets` are per-row probability vectors when some row
    is not a plain one-hot label (synthetic or teacher-labeled data), else None; `private` marks
    the rows that are the client's own records."""

    images: np.ndarray
    labels: np.ndarray
    targets: np.ndarray | None
    private: np.ndarray

    @classmethod
    def of_client(cls, data: ClientData) -> TrainingSet:
        return cls(data.images, data.labels, None, np.ones(len(data), dtype=bool))

    def __len__(self) -> int:
        return len(self.labels)

    def soft_targets(self, num_classes: int) -> np.ndarray:
        if self.targets is not None:
            return self.targets
        return np.eye(num_classes, dtype=np.float32)[self.labels]


class DataSource:
    """The client's own records, every row once: the default data part."""

    #: Why this data reads the client's records outside the privatizer (None: it does not).
    outside_privatizer: str | None = None
    #: Mixes each batch (None: batches are used as drawn).
    mixer: Mixer | None = None

    def training_set(self, data: ClientData, context: RoundContext) -> TrainingSet:
        return TrainingSet.of_client(data)


class Objective:
    """Cross-entropy against the batch's targets (labels or probability vectors): the default
    objective part. An objective `decomposes` when the batch loss is the mean of per-sample
    losses, which per-sample clipping needs."""

    name = "cross-entropy"
    decomposes = True

    def per_sample(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, targets, reduction="none")

    def batch_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, targets)

    def bind(self, model: nn.Module) -> None:
        """Called once a round, before training, with the model being trained: an objective
        that also runs it on other records (a reference batch from the public pool) keeps it
        here. The default reads only the batch's logits."""


class Finisher(ABC):
    """A step on the model once the round's local training is done; what it leaves is the
    upload. It does not run in a round the privatizer stopped (the model was not trained)."""

    #: Why it reads the client's records outside the privatizer (None: it does not).
    outside_privatizer: str | None = None

    @abstractmethod
    def finish(self, model: nn.Module, data: ClientData, context: RoundContext) -> dict[str, Any]:
        """Change the trained `model` in place; return details for the round report."""


@dataclass
class Recipe:
    """The parts of one round, as the composed defenses filled them."""

    data: DataSource = field(default_factory=DataSource)
    objective: Objective = field(default_factory=Objective)
    privatizer: PrivateDefense | None = None
    model_hooks: list[ModelHook] = field(default_factory=list)
    plan_changes: dict[str, Any] = field(default_factory=dict)
    finishers: list[Finisher] = field(default_factory=list)
    #: Why the client does not train this round (e.g. its early-stopping epoch passed).
    skip: str = ""
    filled_by: dict[str, str] = field(default_factory=dict)

    def claim(self, part: str, defense: str) -> None:
        """Each part is filled by one defense: `mixup+diffusion-mixup` would mix twice."""
        if part in self.filled_by:
            raise FedmiaError(f"defenses {self.filled_by[part]!r} and {defense!r} both set the {part} "
                              "of local training; combine defenses that set different parts")
        self.filled_by[part] = defense

    def not_covering(self) -> list[str]:
        """What the privatizer's epsilon does not cover."""
        reasons = [self.data.outside_privatizer, *(finisher.outside_privatizer for finisher in self.finishers)]
        if self.data.mixer is not None:
            reasons.append("mixup: each training example combines two records, so one record "
                           "reaches more than one clipped gradient")
        return [reason for reason in reasons if reason]


class RecipeDefense(Defense):
    """A defense that fills some parts of the local loop; alone, the others keep their
    defaults."""

    @abstractmethod
    def fill(self, recipe: Recipe, data: ClientData, context: RoundContext) -> None:
        """Set this defense's parts (calling `recipe.claim` for each)."""

    def train_round(self, model: nn.Module, data: ClientData, context: RoundContext) -> RoundReport:
        return train_recipe_round((self,), model, data, context)


@contextmanager
def hooked(model: nn.Module, hooks: list[ModelHook]) -> Iterator[None]:
    handles = [handle for hook in hooks for handle in hook(model)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def fill_recipe(parts: tuple[Defense, ...], data: ClientData, context: RoundContext) -> Recipe:
    from fedmia.defenses.private import PrivateDefense

    recipe = Recipe()
    for part in parts:
        if isinstance(part, PrivateDefense):
            recipe.claim("privatizer", part.name)
            recipe.privatizer = part
        elif isinstance(part, RecipeDefense):
            part.fill(recipe, data, context)
        else:
            raise FedmiaError(f"defense {part.name!r} cannot be combined with others; use it alone")
    return recipe


def train_recipe_round(parts: tuple[Defense, ...], model: nn.Module, data: ClientData,
                       context: RoundContext) -> RoundReport:
    """One round of the local loop the parts fill."""
    recipe = fill_recipe(parts, data, context)
    if recipe.skip:
        return RoundReport(len(data), math.nan, math.nan, 0.0, stopped=True, message=recipe.skip)
    context = replace(context, plan=replace(context.plan, **recipe.plan_changes))
    training = recipe.data.training_set(data, context)
    recipe.objective.bind(model)
    with hooked(model, recipe.model_hooks):
        if recipe.privatizer is not None:
            report = _private_round(recipe, model, data, training, context)
        else:
            stats = train_epochs(model, training.images, training.labels, context.plan, context.seed,
                                 loss_fn=recipe.objective.batch_loss, soft_targets=training.targets,
                                 mix=recipe.data.mixer, num_classes=data.num_classes)
            report = RoundReport(len(data), stats.loss, stats.accuracy, stats.seconds,
                                 details={"examples_seen": stats.examples,
                                          "private_rows": int(training.private.sum()),
                                          "training_rows": len(training)})
    return _finish(recipe, model, data, context, report)


def _finish(recipe: Recipe, model: nn.Module, data: ClientData, context: RoundContext,
            report: RoundReport) -> RoundReport:
    """The finishers on the trained model; their details join the report, their time its seconds."""
    if report.stopped or not recipe.finishers:
        return report
    started = time.perf_counter()
    details = dict(report.details)
    for finisher in recipe.finishers:
        details.update(finisher.finish(model, data, context))
    return replace(report, seconds=report.seconds + time.perf_counter() - started, details=details)


def _private_round(recipe: Recipe, model: nn.Module, data: ClientData, training: TrainingSet,
                   context: RoundContext) -> RoundReport:
    assert recipe.privatizer is not None
    if not recipe.objective.decomposes:
        raise FedmiaError(f"objective {recipe.objective.name!r} couples the samples of a batch, so "
                          f"per-sample clipping ({recipe.privatizer.name}) cannot bound one record's "
                          "influence; drop one of the two")
    if recipe.data.mixer is not None:
        training = replace(training, targets=training.soft_targets(data.num_classes))
    report = recipe.privatizer.train_round(model, data, context, training=training,
                                           loss=recipe.objective.per_sample, mixer=recipe.data.mixer)
    reasons = recipe.not_covering()
    if not reasons:
        return report
    return replace(report, details={**report.details, "epsilon_not_covering": reasons})
