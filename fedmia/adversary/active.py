"""The active malicious client (Nasr, Shokri & Houmansadr 2019): gradient ascent on its
candidate records.

After its honest local training, the client pushes its upload *up* the loss of every record it
wants to test. A client that holds such a record then descends on it in the next round, while
nobody descends on a non-member, so the next global model's loss should fall more on members:
the trajectory attacks read that drop. The ascent uses only the records (images and labels),
never their membership.

Unbounded ascent on cross-entropy diverges, and an upload that wrecks the global model would
give the attacker away and stop the federation learning. So every step has a fixed length in
parameter space (normalized gradient), and the ascent stops where the candidates' mean loss has
risen by `MAX_LOSS_RISE` nats: the step that would cross it is shortened by bisection.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fedmia.training import as_tensors

#: Ascent steps at most per round.
ASCENT_STEPS = 10
#: Length (L2 norm over all parameters) of each step along the normalized gradient.
ASCENT_STEP_SIZE = 0.5
#: The candidates' mean loss (nats) may rise by at most this much per round.
MAX_LOSS_RISE = 2.0
#: Records per forward pass: the gradient of the mean loss is accumulated over chunks, so
#: memory stays bounded whatever the number of candidates.
CHUNK_SIZE = 512
#: Halvings of the step that would cross the loss bound.
BISECTIONS = 12


@dataclass(frozen=True)
class AscentStats:
    """The candidates' mean loss (eval mode) before and after the ascent, and the steps taken."""

    loss_before: float
    loss_after: float
    steps: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ascent_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def summed_losses(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                  chunk_size: int) -> Iterator[torch.Tensor]:
    """The summed cross-entropy of each chunk of records, one forward pass per chunk."""
    for start in range(0, len(targets), chunk_size):
        chunk = slice(start, start + chunk_size)
        yield nn.functional.cross_entropy(model(inputs[chunk]), targets[chunk], reduction="sum")


def loss_and_gradient(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                      chunk_size: int) -> tuple[float, list[torch.Tensor]]:
    """Mean cross-entropy over all records and its gradient, accumulated chunk by chunk."""
    parameters = ascent_parameters(model)
    total = 0.0
    gradients = [torch.zeros_like(p) for p in parameters]
    for loss in summed_losses(model, inputs, targets, chunk_size):
        parts = torch.autograd.grad(loss / len(targets), parameters, allow_unused=True)
        for gradient, part in zip(gradients, parts):
            if part is not None:
                gradient.add_(part)
        total += float(loss.detach())
    return total / len(targets), gradients


@torch.no_grad()
def mean_loss(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, chunk_size: int) -> float:
    return sum(float(loss) for loss in summed_losses(model, inputs, targets, chunk_size)) / len(targets)


@torch.no_grad()
def move_to(parameters: list[nn.Parameter], start: list[torch.Tensor], direction: list[torch.Tensor],
            length: float) -> None:
    """Set the parameters to `start + length * direction`."""
    for parameter, origin, step in zip(parameters, start, direction):
        parameter.copy_(origin + length * step)


def below(loss: float, bound: float) -> bool:
    """False for a loss that is not finite, so a diverged step is always shortened."""
    return math.isfinite(loss) and loss < bound


def shorten_step(model: nn.Module, start: list[torch.Tensor], direction: list[torch.Tensor],
                 length: float, start_loss: float, bound: float, inputs: torch.Tensor,
                 targets: torch.Tensor, chunk_size: int) -> float:
    """Bisect the step's length so the loss stays below `bound`; leaves the model at the
    longest length found below it and returns the loss there."""
    parameters = ascent_parameters(model)
    low, high, low_loss = 0.0, length, start_loss
    for _ in range(BISECTIONS):
        middle = (low + high) / 2
        move_to(parameters, start, direction, middle)
        middle_loss = mean_loss(model, inputs, targets, chunk_size)
        if below(middle_loss, bound):
            low, low_loss = middle, middle_loss
        else:
            high = middle
    move_to(parameters, start, direction, low)
    return low_loss


def gradient_ascent(model: nn.Module, images: np.ndarray, labels: np.ndarray, *,
                    steps: int = ASCENT_STEPS, step_size: float = ASCENT_STEP_SIZE,
                    max_rise: float = MAX_LOSS_RISE, chunk_size: int = CHUNK_SIZE,
                    device: str = "cpu") -> AscentStats:
    """Raise `model`'s mean loss on the records in place, by full-batch normalized gradient
    ascent, until `steps` steps or a rise of `max_rise` nats.

    The model is in eval mode throughout: the loss raised is the one the global model is
    scored with, and BatchNorm's running statistics stay as the honest training left them,
    so the parameters change by the ascent steps and nothing else.
    """
    model.to(device).eval()
    if len(labels) == 0:
        return AscentStats(0.0, 0.0, 0)
    inputs, targets = as_tensors(images, labels, device)
    parameters = ascent_parameters(model)
    loss, gradients = loss_and_gradient(model, inputs, targets, chunk_size)
    before, bound, taken = loss, loss + max_rise, 0
    while taken < steps:
        norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in gradients)))
        if not norm > 0 or not math.isfinite(norm):
            break
        start = [p.detach().clone() for p in parameters]
        direction = [g / norm for g in gradients]
        move_to(parameters, start, direction, step_size)
        taken += 1
        start_loss = loss
        loss, gradients = loss_and_gradient(model, inputs, targets, chunk_size)
        if not below(loss, bound):
            loss = shorten_step(model, start, direction, step_size, start_loss, bound,
                                inputs, targets, chunk_size)
            break
    return AscentStats(before, loss, taken)
