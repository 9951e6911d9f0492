"""Reconstruction attacks: what an adversary recovers of clients' images, the second kind of
result beside membership scores.

Two threats, one interface each:
- gradient inversion: the server turns one client's update (the model it sent and the weights
  that came back) into images of that client's records;
- model inversion: whoever holds a model (the final global one) turns a class into images that
  look like the private records of that class.
An attack is one class with its parameters checked up front (`Parameter`), and `reconstruct`
returns images in [0, 1] with the labels it assigns; scoring them against the ground truth is
`fedmia.inversion.metrics`, never the attack's business.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from fedmia.attacks.base import Parameter, checked_params
from fedmia.defenses.cache import PreparationCache
from fedmia.training import TrainingPlan

GRADIENT_INVERSION = "gradient-inversion"
MODEL_INVERSION = "model-inversion"
#: The label of a reconstruction whose attack assigns none.
NO_LABEL = -1


@dataclass(frozen=True)
class ClientUpdate:
    """What the server sees of one client's round: the model it sent, the weights that came
    back, how many records the client reported, and the local protocol every client follows
    (epochs, batch size, learning rate, momentum: an honest-but-curious server knows it)."""

    sent: nn.Module
    returned: dict[str, torch.Tensor]
    num_examples: int
    plan: TrainingPlan
    num_classes: int
    input_shape: tuple[int, int, int]

    @property
    def steps(self) -> int:
        """Local SGD steps the client took: one per batch per epoch."""
        return self.plan.local_epochs * self.plan.steps_per_epoch(self.num_examples)

    def parameter_change(self) -> list[torch.Tensor]:
        """sent minus returned, per trainable parameter in `sent.named_parameters()` order."""
        sent = dict(self.sent.named_parameters())
        return [(sent[name].detach() - self.returned[name].to(sent[name].dtype)) for name in sent]


@dataclass(frozen=True)
class ModelAccess:
    """What a model-inversion adversary has: the model (white box), and its own public pool of
    the same domain, from which the classes it attacks are held out."""

    model: nn.Module
    public_images: np.ndarray
    public_labels: np.ndarray
    num_classes: int
    #: Where trained attack parts (a GAN on the public pool) are kept across runs; None: not kept.
    cache: PreparationCache | None = None


@dataclass(frozen=True)
class Reconstruction:
    """Images in [0, 1] shaped (n, C, H, W), the label the attack gives each (NO_LABEL: none),
    the attack's wall time and what it wants recorded (losses, restarts chosen, ...)."""

    images: np.ndarray
    labels: np.ndarray
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or len(self.images) != len(self.labels):
            raise ValueError(f"a reconstruction is (n, C, H, W) images with n labels, got "
                             f"{self.images.shape} and {self.labels.shape}")


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Per image, the mean absolute difference between neighbouring pixels: the smoothness
    prior of natural images, one weight meaning the same at any resolution."""
    down = (images[:, :, 1:, :] - images[:, :, :-1, :]).abs().flatten(1).mean(1)
    across = (images[:, :, :, 1:] - images[:, :, :, :-1]).abs().flatten(1).mean(1)
    return down + across


class ReconstructionAttack(ABC):
    """One reconstruction attack: parameters checked at construction (a one-line error names
    the bad one), then `reconstruct` on what its threat model observes."""

    name: ClassVar[str]
    #: GRADIENT_INVERSION or MODEL_INVERSION: which observation `reconstruct` takes.
    kind: ClassVar[str]
    parameters: ClassVar[dict[str, Parameter]] = {}

    def __init__(self, **params: Any) -> None:
        self.params = checked_params(self.name, self.parameters, params, what="inversion attack")


class GradientInversionAttack(ReconstructionAttack):
    """Reconstructs a client's records from its update."""

    kind = GRADIENT_INVERSION

    @abstractmethod
    def reconstruct(self, update: ClientUpdate, seed: int) -> Reconstruction:
        """`update.num_examples` images (one per record the client trained on) and their labels."""


class ModelInversionAttack(ReconstructionAttack):
    """Reconstructs what a class of the private data looks like from a model."""

    kind = MODEL_INVERSION

    @abstractmethod
    def reconstruct(self, access: ModelAccess, target_class: int, count: int, seed: int) -> Reconstruction:
        """`count` images the attack presents as `target_class`."""
