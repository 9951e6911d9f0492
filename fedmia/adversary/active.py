"""The active malicious client (Nasr, Shokri & Houmansadr 2019): gradient ascent on its
candidate records.

After its honest local training, the client pushes its upload *up* the loss of every record it
wants to test. A client that holds such a record then descends sharply on it in the next round,
while nobody descends on a non-member, so the next global model's loss falls more on members:
the trajectory attacks read that drop. The ascent uses only the records (images and labels),
never their membership.

Unbounded ascent on cross-entropy diverges, and an upload that wrecks the global model would
give the attacker away and stop the federation learning. So the ascent stops as soon as the
candidates' mean loss has risen by `MAX_LOSS_RISE` nats, and each step's size is bounded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fedmia.training import as_tensors

#: Full-batch ascent steps at most per round.
ASCENT_STEPS = 20
#: Step size of each ascent step (plain gradient, no momentum).
ASCENT_LR = 0.05
#: The ascent stops once the candidates' mean loss has risen by this much (nats).
MAX_LOSS_RISE = 1.0
#: Records per forward pass: the gradient of the mean loss is accumulated over chunks, so
#: memory stays bounded whatever the number of candidates.
CHUNK_SIZE = 512


@dataclass(frozen=True)
class AscentStats:
    """The candidates' mean loss (eval mode) before and after the ascent, and the steps taken."""

    loss_before: float
    loss_after: float
    steps: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def loss_and_gradient(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                      chunk_size: int) -> tuple[float, list[torch.Tensor]]:
    """Mean cross-entropy over all records and its gradient, accumulated chunk by chunk."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    for parameter in parameters:
        parameter.grad = None
    total = 0.0
    for start in range(0, len(targets), chunk_size):
        chunk = slice(start, start + chunk_size)
        loss = nn.functional.cross_entropy(model(inputs[chunk]), targets[chunk], reduction="sum")
        (loss / len(targets)).backward()
        total += float(loss.detach())
    gradients = [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in parameters]
    for parameter in parameters:
        parameter.grad = None
    return total / len(targets), gradients


def gradient_ascent(model: nn.Module, images: np.ndarray, labels: np.ndarray, *,
                    steps: int = ASCENT_STEPS, lr: float = ASCENT_LR,
                    max_rise: float = MAX_LOSS_RISE, chunk_size: int = CHUNK_SIZE,
                    device: str = "cpu") -> AscentStats:
    """Raise `model`'s mean loss on the records in place, by full-batch gradient ascent.

    The model is in eval mode throughout: the loss raised is the one the global model is
    scored with, and BatchNorm's running statistics stay as the honest training left them,
    so the parameters change by the ascent steps and nothing else.
    """
    model.to(device).eval()
    if len(labels) == 0:
        return AscentStats(0.0, 0.0, 0)
    inputs, targets = as_tensors(images, labels, device)
    parameters = [p for p in model.parameters() if p.requires_grad]
    loss, gradients = loss_and_gradient(model, inputs, targets, chunk_size)
    before, taken = loss, 0
    while taken < steps and loss < before + max_rise:
        with torch.no_grad():
            for parameter, gradient in zip(parameters, gradients):
                parameter.add_(gradient, alpha=lr)
        taken += 1
        loss, gradients = loss_and_gradient(model, inputs, targets, chunk_size)
    return AscentStats(before, loss, taken)
