"""`mixup-mmd` (Li, Li & Ribeiro 2021): mixup training plus a set regularizer, the maximum mean
discrepancy (MMD) between the model's softmax outputs on training records and on validation
records, which pushes the model to behave on its members as it does on records it never
trained on: the generalization gap membership inference reads. Seed 002 uses alpha 1.0 and
weight (the paper's lambda) 0.1.

Each step trains on a mixed batch (the `mixup` defense's mixer, Beta(alpha, alpha)). The
regularizer is computed per class (as we read the paper) and averaged over the classes present,
on a separate clean batch of the client's records, as large as the step's, and a validation
batch from the run's public pool matched to it class by class (one public record of the same
class per member; members of a class the pool lacks are left out). The trained batch cannot
serve: it is mixed. It is the biased (V-statistic) estimate, defined with one record of a class
on each side and never negative, under a Gaussian kernel of bandwidth 1: softmax vectors lie in
the simplex, of diameter sqrt 2, so it spans the gaps between member and non-member outputs,
from small confidence differences to whole misclassifications (on digits, narrower kernels,
0.05 or 0.2, collapsed the model to a constant output from weight 1 up). Gradients flow through
both sides; the validation side is public. The term couples the samples of a batch, so the
objective does not compose with per-sample clipping.
"""

from __future__ import annotations

import torch
from torch import nn

from fedmia.defenses.base import ClientData, RoundContext, check_param
from fedmia.defenses.mixup import MixedData, mix_pairs
from fedmia.defenses.recipe import Objective, Recipe, RecipeDefense
from fedmia.seeding import round_seed

#: Seed key of this defense's draws of clean and validation batches.
MMD_STREAM = 8_000_003
BANDWIDTH = 1.0


def gaussian_mmd(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared MMD (biased estimate) between the rows of `x` and of `y`, Gaussian kernel of
    bandwidth `BANDWIDTH`."""
    def kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.exp(-torch.cdist(a, b).square() / (2 * BANDWIDTH**2)).mean()

    return kernel(x, x) + kernel(y, y) - 2 * kernel(x, y)


def classwise_mmd(x: torch.Tensor, x_labels: torch.Tensor, y: torch.Tensor,
                  y_labels: torch.Tensor) -> torch.Tensor:
    """`gaussian_mmd` within each class present on both sides, averaged over those classes
    (zero when none is)."""
    shared = [c for c in x_labels.unique() if bool((y_labels == c).any())]
    if not shared:
        return x.sum() * 0.0
    return torch.stack([gaussian_mmd(x[x_labels == c], y[y_labels == c]) for c in shared]).mean()


class ClassMatchedPairs:
    """Draws a clean batch of the client's records and, for each, a public record of its class."""

    def __init__(self, data: ClientData, public: tuple[torch.Tensor, torch.Tensor],
                 device: str, seed: int) -> None:
        self.images = torch.as_tensor(data.images, device=device)
        self.labels = torch.as_tensor(data.labels, device=device)
        self.public_images, public_labels = public
        self.public_order = torch.argsort(public_labels, stable=True)
        self.public_counts = torch.bincount(public_labels, minlength=data.num_classes)
        self.public_starts = torch.cumsum(self.public_counts, 0) - self.public_counts
        self.generator = torch.Generator(device).manual_seed(round_seed(seed, MMD_STREAM))

    def draw(self, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(member images, validation images, their shared labels)."""
        device = self.generator.device
        rows = torch.randint(len(self.labels), (size,), generator=self.generator, device=device)
        labels = self.labels[rows]
        counts = self.public_counts[labels]
        rows, labels, counts = rows[counts > 0], labels[counts > 0], counts[counts > 0]
        offsets = (torch.rand(len(rows), generator=self.generator, device=device) * counts).long()
        public_rows = self.public_order[self.public_starts[labels] + offsets.clamp(max=counts - 1)]
        return self.images[rows], self.public_images[public_rows], labels


class MMDObjective(Objective):
    """Cross-entropy on the (mixed) batch plus `weight` times the class-wise MMD between the
    model's softmax outputs on clean members and on class-matched public records."""

    name = "mixup-mmd"
    decomposes = False

    def __init__(self, weight: float, pairs: ClassMatchedPairs) -> None:
        self.weight = weight
        self.pairs = pairs
        self.model: nn.Module | None = None

    def bind(self, model: nn.Module) -> None:
        self.model = model

    def batch_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits, targets) + self.weight * self.discrepancy(len(logits))

    def discrepancy(self, size: int) -> torch.Tensor:
        """The class-wise MMD on a fresh draw of `size` members and their validation matches."""
        if self.model is None:
            raise RuntimeError("mixup-mmd's objective runs the model on the public pool; bind it first")
        members, validation, labels = self.pairs.draw(size)
        # One forward pass, so that BatchNorm normalizes both sides alike.
        outputs = nn.functional.softmax(self.model(torch.cat([members, validation])), dim=1)
        return classwise_mmd(outputs[: len(labels)], labels, outputs[len(labels):], labels)


class MixupMMD(RecipeDefense):
    name = "mixup-mmd"
    needs_public_pool = True

    def __init__(self, alpha: float = 1.0, weight: float = 0.1) -> None:
        self.alpha = check_param("alpha", alpha, 1e-3, 100.0, defense=self.name)
        self.weight = check_param("weight", weight, 0.0, 100.0, defense=self.name)

    def fill(self, recipe: Recipe, data: ClientData, context: RoundContext) -> None:
        images, labels = data.public(self.name)
        recipe.claim("data", self.name)
        recipe.claim("objective", self.name)
        device = context.plan.device
        public = (torch.as_tensor(images, device=device), torch.as_tensor(labels, device=device))
        recipe.data = MixedData(mix_pairs(self.alpha))
        recipe.objective = MMDObjective(self.weight, ClassMatchedPairs(data, public, device, context.seed))
