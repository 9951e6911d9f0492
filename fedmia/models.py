"""Model registry: a small CNN sized to the input (default), ResNet-18 and VGG-11.

Every model has a DP-compatible form (no BatchNorm: GroupNorm instead, through Opacus's
`ModuleValidator.fix`), used for the whole federation as soon as one client trains with
per-sample gradients. The same name, shape, seed and form always give the same weights.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from fedmia.errors import FedmiaError


class SmallCNN(nn.Module):
    """Two conv blocks and a linear head; width and pooling follow the input size."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int, width: int = 16):
        super().__init__()
        channels, height, width_px = input_shape
        pool_steps = 1 if min(height, width_px) < 16 else 2
        layers: list[nn.Module] = []
        in_channels = channels
        for block in range(2):
            out_channels = width * (2**block)
            layers += [
                nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=False),
            ]
            if block < pool_steps:
                layers.append(nn.MaxPool2d(2))
            in_channels = out_channels
        self.features = nn.Sequential(*layers)
        reduced = (height // 2**pool_steps) * (width_px // 2**pool_steps)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_channels * reduced, 64),
            nn.ReLU(inplace=False),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _resnet18(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """torchvision ResNet-18 with a 3x3 stem and no max-pool, for 8-32 px images."""
    from torchvision.models import resnet18

    model = resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(input_shape[0], 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def _vgg11(input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    """torchvision VGG-11 (with BatchNorm) keeping only as many pools as the image allows,
    a global average pool and a small head."""
    from torchvision.models import vgg11_bn

    model = vgg11_bn(weights=None)
    model.features[0] = nn.Conv2d(input_shape[0], 64, kernel_size=3, padding=1)
    allowed_pools = max(0, min(input_shape[1:]).bit_length() - 1)
    pools = [i for i, layer in enumerate(model.features) if isinstance(layer, nn.MaxPool2d)]
    for index in pools[allowed_pools:]:
        model.features[index] = nn.Identity()
    model.avgpool = nn.AdaptiveAvgPool2d(1)
    model.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(512, num_classes))
    return model


MODELS: dict[str, Callable[[tuple[int, int, int], int], nn.Module]] = {
    "cnn": SmallCNN,
    "resnet18": _resnet18,
    "vgg11": _vgg11,
}


def make_dp_compatible(model: nn.Module) -> nn.Module:
    """Replace what per-sample-gradient training cannot handle (BatchNorm -> GroupNorm)."""
    from opacus.validators import ModuleValidator

    fixed = ModuleValidator.fix(model)
    errors = ModuleValidator.validate(fixed, strict=False)
    if errors:
        raise FedmiaError(f"model cannot be made DP-compatible: {errors[0]}; pick another --model")
    return fixed


def build_model(
    name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    dp_compatible: bool = False,
    seed: int = 0,
) -> nn.Module:
    """Build a registered model with initial weights fixed by `seed`."""
    if name not in MODELS:
        raise FedmiaError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = MODELS[name](tuple(input_shape), num_classes)
        if dp_compatible:
            model = make_dp_compatible(model)
    return model
