"""Local training and inference on in-memory arrays.

Client data is small and already in memory, so batches are drawn straight from the arrays with
a seeded permutation: no DataLoader workers, identical batches for the same seed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedmia.seeding import stream_generator

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: Turns a batch (images, probability targets) into the batch a step trains on (e.g. mixup).
Mixer = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class TrainingPlan:
    """The local recipe every client follows, whatever its defense adds on top."""

    local_epochs: int = 2
    #: 0: the client's whole data as one batch (with one local epoch, a FedSGD client).
    batch_size: int = 16
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    device: str = "cpu"

    def batch_for(self, num_examples: int) -> int:
        """The batch size on `num_examples` records (0 in the plan: all of them)."""
        return self.batch_size or max(num_examples, 1)

    def steps_per_epoch(self, num_examples: int) -> int:
        return -(-num_examples // self.batch_for(num_examples))


@dataclass(frozen=True)
class TrainStats:
    """Averages over the examples seen in one call of `train_epochs`."""

    loss: float
    accuracy: float
    examples: int
    seconds: float


def make_optimizer(model: nn.Module, plan: TrainingPlan) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        model.parameters(), lr=plan.lr, momentum=plan.momentum, weight_decay=plan.weight_decay
    )


def minibatches(num_examples: int, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Shuffled index batches covering every example once (the last batch may be smaller)."""
    order = rng.permutation(num_examples)
    for start in range(0, num_examples, batch_size):
        yield order[start : start + batch_size]


def as_tensors(images: np.ndarray, labels: np.ndarray, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.as_tensor(images, device=device), torch.as_tensor(labels, device=device)


def train_epochs(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    plan: TrainingPlan,
    seed: int,
    *,
    epochs: int | None = None,
    loss_fn: LossFn = nn.functional.cross_entropy,
    optimizer: torch.optim.Optimizer | None = None,
    soft_targets: np.ndarray | None = None,
    mix: Mixer | None = None,
    num_classes: int = 0,
) -> TrainStats:
    """Minibatch SGD for `epochs` (default: the plan's local epochs). `loss_fn` gets the labels,
    or the rows of `soft_targets` (probability vectors) when given; `mix` (with `num_classes`
    for one-hot targets) turns each batch into the one trained on. Accuracy counts the batch's
    labels."""
    started = time.perf_counter()
    model.to(plan.device).train()
    optimizer = optimizer or make_optimizer(model, plan)
    inputs, hard = as_tensors(images, labels, plan.device)
    targets = hard if soft_targets is None and mix is None else _probabilities(
        soft_targets, hard, num_classes, plan.device)
    mixing = stream_generator(seed, "mixing", plan.device) if mix is not None else None
    rng = np.random.default_rng(seed)
    total_loss, correct, seen = 0.0, 0, 0
    for _ in range(plan.local_epochs if epochs is None else epochs):
        for batch in minibatches(len(labels), plan.batch_for(len(labels)), rng):
            optimizer.zero_grad(set_to_none=True)
            batch_inputs, batch_targets = inputs[batch], targets[batch]
            if mix is not None and mixing is not None:
                batch_inputs, batch_targets = mix(batch_inputs, batch_targets, mixing)
            logits = model(batch_inputs)
            loss = loss_fn(logits, batch_targets)
            loss.backward()
            optimizer.step()
            total_loss += float(loss.detach()) * len(batch)
            correct += int((logits.argmax(1) == hard[batch]).sum())
            seen += len(batch)
    return TrainStats(total_loss / max(seen, 1), correct / max(seen, 1), seen,
                      time.perf_counter() - started)


def _probabilities(soft_targets: np.ndarray | None, labels: torch.Tensor, num_classes: int,
                   device: str) -> torch.Tensor:
    if soft_targets is not None:
        return torch.as_tensor(soft_targets, dtype=torch.float32, device=device)
    if num_classes < 1:
        raise ValueError("mixing one-hot targets needs num_classes")
    return nn.functional.one_hot(labels, num_classes).float()


@torch.no_grad()
def predict_logits(model: nn.Module, images: np.ndarray, device: str = "cpu",
                   batch_size: int = 1024) -> np.ndarray:
    """Logits of `model` in eval mode, as float64 for numerically stable attack signals."""
    model.to(device).eval()
    outputs = [
        model(torch.as_tensor(images[start : start + batch_size], device=device)).double().cpu()
        for start in range(0, len(images), batch_size)
    ]
    return torch.cat(outputs).numpy() if outputs else np.zeros((0, 0))


def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray, device: str = "cpu") -> float:
    if len(labels) == 0:
        return float("nan")
    return float((predict_logits(model, images, device).argmax(1) == labels).mean())
