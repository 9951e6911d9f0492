"""Judging model inversion (docs/PROTOCOL.md, Inversion): does an inverted image of a class show
that class, and how close does it come to the class's private records?

The judge is an evaluation classifier independent of the target: another architecture (a wider,
deeper CNN with GroupNorm and global average pooling, where the target's SmallCNN has two
BatchNorm blocks and a flattening head) trained on data the target never saw, which the caller
chooses. An inversion that merely fools the target's decision boundary (an adversarial pattern)
does not carry over to it; one that recovers the class's features does. Distances are measured
in its penultimate features, the space where it tells the classes apart:
- attack accuracy: the fraction of inverted images it assigns to the attacked class;
- feature distance: the mean, over inverted images, of the distance to the nearest private
  record of the class (as in GMI, Zhang et al. 2020);
- Frechet distance between Gaussians fit to the features of two sets (FID's formula, on the
  evaluator's features instead of Inception's, so nothing is downloaded).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
from scipy.spatial.distance import cdist
import torch
from torch import nn

from fedmia.defenses.teacher import penultimate_features
from fedmia.errors import FedmiaError
from fedmia.training import TrainingPlan, predict_logits, train_epochs

#: Added to both covariances' diagonals, so that a Frechet distance between a few samples in
#: many feature dimensions (a singular covariance) has a real square root.
RIDGE = 1e-6
EVALUATOR_EPOCHS = 30
#: Groups of every GroupNorm layer: the evaluator trains the same at any batch size.
NORM_GROUPS = 8


class EvaluatorCNN(nn.Module):
    """Three conv stages of two 3x3 convolutions each (32, 64, 128 channels, GroupNorm), pooling
    between stages while the image allows, global average pooling and a two-layer head."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, width: int = 32) -> None:
        super().__init__()
        channels, height, width_px = input_shape
        layers: list[nn.Module] = []
        side, in_channels = min(height, width_px), channels
        for stage in range(3):
            out_channels = width * 2**stage
            for _ in range(2):
                layers += [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
                           nn.GroupNorm(NORM_GROUPS, out_channels), nn.ReLU()]
                in_channels = out_channels
            if stage < 2 and side >= 4:
                layers.append(nn.MaxPool2d(2))
                side //= 2
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(in_channels, 128), nn.ReLU(), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def train_evaluator(images: np.ndarray, labels: np.ndarray, num_classes: int, seed: int, *,
                    epochs: int = EVALUATOR_EPOCHS, plan: TrainingPlan | None = None) -> nn.Module:
    """An evaluation classifier trained on `images` (which must be records the target never
    saw: the caller's choice) for `epochs` of SGD (default plan: batch 64, lr 0.05, momentum
    0.9, weight decay 5e-4). Returned in eval mode."""
    if len(images) == 0 or len(images) != len(labels):
        raise FedmiaError(f"the evaluator needs as many labels as images, and some of each; got "
                          f"{len(images)} images and {len(labels)} labels")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise FedmiaError(f"evaluator labels must be in 0..{num_classes - 1}; got {labels.min()}..{labels.max()}")
    plan = plan or TrainingPlan(batch_size=64, lr=0.05, momentum=0.9, weight_decay=5e-4)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = EvaluatorCNN(tuple(images.shape[1:]), num_classes)  # type: ignore[arg-type]
    train_epochs(model, images, labels, plan, seed, epochs=epochs)
    model.zero_grad(set_to_none=True)
    return model.eval()


def attack_accuracy(evaluator: nn.Module, images: np.ndarray, target_class: int) -> float:
    """The fraction of `images` the evaluator assigns to `target_class`."""
    _check_images(images, "inverted images")
    return float((predict_logits(evaluator, images, _device(evaluator)).argmax(1) == target_class).mean())


def features(evaluator: nn.Module, images: np.ndarray) -> np.ndarray:
    """The evaluator's penultimate features (the input of its last linear layer), float64."""
    return penultimate_features(evaluator, images, str(_device(evaluator)))


def nearest_private_distance(evaluator: nn.Module, images: np.ndarray, private_images: np.ndarray) -> float:
    """Mean over `images` of the Euclidean feature distance to the nearest of `private_images`
    (the private records of the attacked class)."""
    _check_images(images, "inverted images")
    _check_images(private_images, "private images")
    return float(cdist(features(evaluator, images), features(evaluator, private_images)).min(1).mean())


def frechet_distance(evaluator: nn.Module, images_a: np.ndarray, images_b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between Gaussians fit to the
    evaluator's features of the two sets (each of at least two images)."""
    for images, name in ((images_a, "first set"), (images_b, "second set")):
        _check_images(images, name, at_least=2)
    mean_a, cov_a = _gaussian(features(evaluator, images_a))
    mean_b, cov_b = _gaussian(features(evaluator, images_b))
    root = scipy.linalg.sqrtm(cov_a @ cov_b)
    trace = np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(np.real(root))
    return float(max(((mean_a - mean_b) ** 2).sum() + trace, 0.0))


def _gaussian(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return points.mean(0), np.cov(points, rowvar=False) + RIDGE * np.eye(points.shape[1])


@dataclass(frozen=True)
class ModelInversionMetrics:
    """How one class's inversion fares with the evaluator: attack accuracy, feature distance to
    the nearest private record, Frechet distance to the private records, and how many images."""

    attack_accuracy: float
    feature_distance: float
    frechet: float
    images: int

    def to_dict(self) -> dict[str, Any]:
        return {"attack_accuracy": self.attack_accuracy, "feature_distance": self.feature_distance,
                "frechet": self.frechet, "images": self.images}


def judge_inversion(evaluator: nn.Module, images: np.ndarray, target_class: int,
                    private_images: np.ndarray) -> ModelInversionMetrics:
    """All three measures of `images` inverted for `target_class`, against that class's
    private records (the Frechet distance needs at least two of each)."""
    return ModelInversionMetrics(attack_accuracy(evaluator, images, target_class),
                                 nearest_private_distance(evaluator, images, private_images),
                                 frechet_distance(evaluator, images, private_images), len(images))


def _check_images(images: np.ndarray, name: str, at_least: int = 1) -> None:
    if images.ndim != 4 or len(images) < at_least:
        raise FedmiaError(f"the {name} must be (n, C, H, W) with n >= {at_least}, got shape {images.shape}")


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device
