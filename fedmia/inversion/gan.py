"""A small DCGAN (Radford et al. 2016) as an image prior, and latent-space inversion against a
classifier: the GMI step (Zhang et al. 2020).

The generator maps a standard-normal latent to an image in [0, 1] through a linear layer and two
stride-2 transposed convolutions, so it starts at a quarter of the image side (2x2 for the 8x8
digits, 7x7 for Fashion-MNIST, 8x8 for CIFAR) and crops any excess when the side is not a
multiple of four. The discriminator mirrors it with two stride-2 convolutions and a linear
logit. Both are sized to the input shape and trained with the non-saturating GAN loss and Adam
(lr 2e-4, beta1 0.5, as in DCGAN).

`invert_latents` is generic over the classifier it attacks: any `nn.Module` mapping images in
[0, 1] to logits, any class. It searches the latent space for images the discriminator finds
real (the prior) that the classifier assigns to the target class (the identity term).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fedmia.errors import FedmiaError
from fedmia.seeding import round_seed

LATENT_DIM = 32
#: Default training steps: digit-like 8x8 samples in about 13 s of one core's time, garment-like
#: (noisy) 28x28 Fashion-MNIST samples in about 160 s.
GAN_STEPS = 1500
GAN_BATCH = 64
GAN_LR = 2e-4
#: Latent streams of a seed: training noise, training batches, inversion starts.
_STREAMS = {"noise": 1, "batches": 2, "latents": 3}


def _generator(seed: int, stream: str) -> torch.Generator:
    return torch.Generator().manual_seed(round_seed(seed, _STREAMS[stream]))


def _width(image_shape: tuple[int, int, int]) -> int:
    """Feature maps of the widest layer: small images need fewer."""
    return 64 if max(image_shape[1:]) <= 16 else 128


class Generator(nn.Module):
    """Latent (n, latent_dim) -> images (n, C, H, W) in [0, 1]."""

    def __init__(self, image_shape: tuple[int, int, int], latent_dim: int = LATENT_DIM) -> None:
        super().__init__()
        channels, height, width = image_shape
        self.image_shape = image_shape
        self.start = (-(-height // 4), -(-width // 4))
        wide = _width(image_shape)
        self.project = nn.Sequential(
            nn.Linear(latent_dim, wide * self.start[0] * self.start[1]),
            nn.BatchNorm1d(wide * self.start[0] * self.start[1]),
            nn.ReLU(),
        )
        self.upsample = nn.Sequential(
            nn.ConvTranspose2d(wide, wide // 2, kernel_size=4, stride=2, padding=1),
            nn.BatchNorm2d(wide // 2),
            nn.ReLU(),
            nn.ConvTranspose2d(wide // 2, channels, kernel_size=4, stride=2, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        wide = self.upsample[0].in_channels
        grid = self.project(latents).view(len(latents), wide, *self.start)
        _, height, width = self.image_shape
        return self.upsample(grid)[:, :, :height, :width]


class Discriminator(nn.Module):
    """Images (n, C, H, W) in [0, 1] -> one logit each (positive: real)."""

    def __init__(self, image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        channels, height, width = image_shape
        wide = _width(image_shape)
        reduced = (height // 4) * (width // 4)
        self.net = nn.Sequential(
            nn.Conv2d(channels, wide // 2, kernel_size=4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(wide // 2, wide, kernel_size=4, stride=2, padding=1),
            nn.LeakyReLU(0.2),
            nn.Flatten(),
            nn.Linear(wide * reduced, 1),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images * 2 - 1).squeeze(1)


@dataclass
class TrainedGan:
    """A trained generator and discriminator (in eval mode) with what caching and reporting
    need: the image shape, the latent size, and how training went."""

    generator: Generator
    discriminator: Discriminator
    image_shape: tuple[int, int, int]
    latent_dim: int
    steps: int
    seconds: float
    #: Mean losses over the last tenth of the steps.
    generator_loss: float
    discriminator_loss: float

    def arrays(self) -> dict[str, np.ndarray]:
        """Both networks' weights, for a `Prepared` cache entry."""
        return {f"{part}.{name}": tensor.detach().cpu().numpy()
                for part, module in (("generator", self.generator), ("discriminator", self.discriminator))
                for name, tensor in module.state_dict().items()}

    def details(self) -> dict[str, Any]:
        """Everything but the weights, as JSON."""
        return {"image_shape": list(self.image_shape), "latent_dim": self.latent_dim, "steps": self.steps,
                "seconds": self.seconds, "generator_loss": self.generator_loss,
                "discriminator_loss": self.discriminator_loss}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], details: dict[str, Any]) -> TrainedGan:
        """The GAN that `arrays()` and `details()` describe."""
        shape = tuple(details["image_shape"])
        generator, discriminator = Generator(shape, details["latent_dim"]), Discriminator(shape)  # type: ignore[arg-type]
        for part, module in (("generator", generator), ("discriminator", discriminator)):
            prefix = f"{part}."
            module.load_state_dict({name[len(prefix):]: torch.as_tensor(array)
                                    for name, array in arrays.items() if name.startswith(prefix)})
        return cls(generator.eval(), discriminator.eval(), shape, details["latent_dim"],  # type: ignore[arg-type]
                   details["steps"], details["seconds"], details["generator_loss"], details["discriminator_loss"])

    @torch.no_grad()
    def sample(self, count: int, seed: int) -> np.ndarray:
        """`count` images (float32, [0, 1]) from seeded latents."""
        latents = initial_latents(self, count, seed).to(_device(self.generator))
        return self.generator.eval()(latents).cpu().numpy()


def _check_images(images: np.ndarray) -> None:
    if images.ndim != 4 or len(images) < 2:
        raise FedmiaError(f"a GAN trains on (n, C, H, W) images with n >= 2, got shape {images.shape}; "
                          "give it a larger public pool")
    if min(images.shape[2:]) < 4:
        raise FedmiaError(f"a GAN needs images of at least 4x4 pixels, got {images.shape[2:]}")


def train_gan(images: np.ndarray, seed: int, steps: int = GAN_STEPS, *, batch_size: int = GAN_BATCH,
              lr: float = GAN_LR, latent_dim: int = LATENT_DIM, device: str = "cpu") -> TrainedGan:
    """A GAN trained on `images` (float32 (n, C, H, W) in [0, 1]) for `steps` alternating
    discriminator and generator updates. A seed fixes the weights, batches and noise."""
    _check_images(images)
    if steps < 0 or batch_size < 1 or latent_dim < 1 or not lr > 0:
        raise FedmiaError(f"GAN training needs steps >= 0, batch_size >= 1, latent_dim >= 1 and lr > 0, got "
                          f"{steps}, {batch_size}, {latent_dim}, {lr}; fix the GAN settings")
    started = time.perf_counter()
    shape: tuple[int, int, int] = tuple(images.shape[1:])  # type: ignore[assignment]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator, discriminator = Generator(shape, latent_dim).to(device), Discriminator(shape).to(device)
    optimizers = [torch.optim.Adam(module.parameters(), lr=lr, betas=(0.5, 0.999))
                  for module in (generator, discriminator)]
    data = torch.as_tensor(images, dtype=torch.float32, device=device)
    noise, batches = _generator(seed, "noise"), _generator(seed, "batches")
    losses: list[tuple[float, float]] = []
    for _ in range(steps):
        real = data[torch.randint(len(data), (min(batch_size, len(data)),), generator=batches).to(device)]
        latents = torch.randn(len(real), latent_dim, generator=noise).to(device)
        losses.append(_gan_step(generator, discriminator, optimizers, real, latents))
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    tail = np.array(losses[-max(1, steps // 10):]) if losses else np.full((1, 2), np.nan)
    return TrainedGan(generator.eval(), discriminator.eval(), shape, latent_dim, steps,
                      time.perf_counter() - started, float(tail[:, 0].mean()), float(tail[:, 1].mean()))


def _gan_step(generator: Generator, discriminator: Discriminator, optimizers: list[torch.optim.Optimizer],
              real: torch.Tensor, latents: torch.Tensor) -> tuple[float, float]:
    """One discriminator update, then one non-saturating generator update; their losses."""
    generator.train()
    discriminator.train()
    softplus = nn.functional.softplus
    fake = generator(latents)
    optimizers[1].zero_grad(set_to_none=True)
    d_loss = softplus(-discriminator(real)).mean() + softplus(discriminator(fake.detach())).mean()
    d_loss.backward()
    optimizers[1].step()
    optimizers[0].zero_grad(set_to_none=True)
    g_loss = softplus(-discriminator(fake)).mean()
    g_loss.backward()
    optimizers[0].step()
    return float(g_loss.detach()), float(d_loss.detach())


def initial_latents(gan: TrainedGan, count: int, seed: int) -> torch.Tensor:
    """The standard-normal latents an inversion (or a sample) with this seed starts from."""
    return torch.randn(count, gan.latent_dim, generator=_generator(seed, "latents"))


def _objective(gan: TrainedGan, classifier: nn.Module, images: torch.Tensor, target_class: int,
               prior_weight: float) -> torch.Tensor:
    """Per image: prior_weight * -log D(x) + CE(classifier(x), target_class)."""
    prior = nn.functional.softplus(-gan.discriminator(images))
    targets = torch.full((len(images),), target_class, dtype=torch.long, device=images.device)
    identity = nn.functional.cross_entropy(classifier(images), targets, reduction="none")
    return prior_weight * prior + identity


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters(), torch.empty(0)).device


def _check_target(classifier: nn.Module, gan: TrainedGan, target_class: int) -> None:
    with torch.no_grad():
        probe = gan.generator.eval()(torch.zeros(1, gan.latent_dim, device=_device(gan.generator)))
        classes = classifier.eval()(probe.to(_device(classifier))).shape[1]
    if not 0 <= target_class < classes:
        raise FedmiaError(f"target class {target_class} is not one of the classifier's {classes} classes; "
                          f"pick one in 0..{classes - 1}")


@torch.no_grad()
def inversion_objective(gan: TrainedGan, classifier: nn.Module, images: np.ndarray, target_class: int,
                        prior_weight: float) -> np.ndarray:
    """The objective `invert_latents` minimizes, per image: how unreal the discriminator finds
    it (weighted) plus how far the classifier is from the target class."""
    device = _device(classifier)
    gan.discriminator.to(device).eval()
    classifier.eval()
    batch = torch.as_tensor(images, dtype=torch.float32, device=device)
    return _objective(gan, classifier, batch, target_class, prior_weight).double().cpu().numpy()


def invert_latents(gan: TrainedGan, classifier: nn.Module, target_class: int, count: int, *,
                   iterations: int, lr: float, prior_weight: float, seed: int) -> np.ndarray:
    """`count` images (float32 (count, C, H, W) in [0, 1]) generated from latents found by Adam
    on `inversion_objective`, one seeded standard-normal start each. Only the latents move:
    gradients are taken with `torch.autograd.grad`, so neither the classifier nor the GAN
    accumulates any, and both are left in eval mode."""
    if count < 1 or iterations < 0 or not lr > 0 or not prior_weight >= 0:
        raise FedmiaError(f"latent inversion needs count >= 1, iterations >= 0, lr > 0 and prior_weight >= 0, "
                          f"got {count}, {iterations}, {lr}, {prior_weight}; fix the inversion settings")
    _check_target(classifier, gan, target_class)
    device = _device(classifier)
    gan.generator.to(device).eval()
    gan.discriminator.to(device).eval()
    latents = initial_latents(gan, count, seed).to(device).requires_grad_(True)
    optimizer = torch.optim.Adam([latents], lr=lr)
    for _ in range(iterations):
        loss = _objective(gan, classifier, gan.generator(latents), target_class, prior_weight).sum()
        (latents.grad,) = torch.autograd.grad(loss, [latents])
        optimizer.step()
    with torch.no_grad():
        return gan.generator(latents).cpu().numpy().astype(np.float32)
