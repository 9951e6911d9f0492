"""Model inversion: from a white-box model, images of what one class of its private data looks
like.

- `mi-face` (Fredrikson et al. 2015): descent on the input itself towards the target class, with
  a total-variation prior and the box [0, 1]. Each image starts from its own seeded uniform
  noise, and the loss is the cross-entropy of the target class (the paper's 1 - p stops pulling
  as soon as p nears 1, which leaves the prior to flatten the image into grey).
- `gmi` (Zhang et al. 2020): a GAN trained on the adversary's public pool with the attacked
  class held out, then a search of its latent space for images the target assigns to the class
  (`fedmia.inversion.gan.invert_latents`). The GAN is kept in the access's cache under a key
  over the very images it trained on, the seed and its settings.

Both use Adam and return `count` images labelled `target_class`; scoring them is
`fedmia.inversion.judge`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedmia.attacks.base import Parameter
from fedmia.defenses.cache import PreparationCache, Prepared, content_key
from fedmia.errors import FedmiaError
from fedmia.inversion.base import ModelAccess, ModelInversionAttack, Reconstruction, total_variation
from fedmia.inversion.gan import (GAN_BATCH, GAN_LR, GAN_STEPS, LATENT_DIM, TrainedGan, inversion_objective,
                                  invert_latents, train_gan)
from fedmia.seeding import round_seed

#: The cache kind of a GMI GAN.
GAN_KIND = "gmi-gan"


def _check_request(access: ModelAccess, target_class: int, count: int) -> None:
    if not 0 <= target_class < access.num_classes:
        raise FedmiaError(f"target class {target_class} is not one of the model's {access.num_classes} classes; "
                          f"pick one in 0..{access.num_classes - 1}")
    if count < 1:
        raise FedmiaError(f"a model inversion needs count >= 1 images, got {count}")


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


class MiFace(ModelInversionAttack):
    """Fredrikson et al.'s inversion by descent on the input."""

    name = "mi-face"
    parameters = {
        "iterations": Parameter(300, 1, 100_000, "Adam steps on the images"),
        "lr": Parameter(0.05, 1e-6, 10.0, "Adam learning rate on pixel values"),
        "tv": Parameter(0.5, 0.0, 1000.0, "weight of the total-variation prior"),
    }

    def reconstruct(self, access: ModelAccess, target_class: int, count: int, seed: int) -> Reconstruction:
        _check_request(access, target_class, count)
        started = time.perf_counter()
        model = access.model.eval()
        device = _device(model)
        start = torch.Generator().manual_seed(round_seed(seed, target_class))
        images = torch.rand(count, *access.public_images.shape[1:], generator=start).to(device).requires_grad_(True)
        targets = torch.full((count,), target_class, dtype=torch.long, device=device)
        optimizer = torch.optim.Adam([images], lr=self.params["lr"])
        for _ in range(self.params["iterations"]):
            loss = self._loss(model, images, targets).sum()
            (images.grad,) = torch.autograd.grad(loss, [images])
            optimizer.step()
            with torch.no_grad():
                images.clamp_(0.0, 1.0)
        with torch.no_grad():
            final = self._loss(model, images, targets)
            confidence = torch.softmax(model(images), 1)[:, target_class]
        details = {"final_loss": float(final.mean()), "target_confidence": float(confidence.mean())}
        return Reconstruction(images.detach().cpu().numpy().astype(np.float32),
                              np.full(count, target_class, dtype=np.int64), time.perf_counter() - started, details)

    def _loss(self, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        identity = nn.functional.cross_entropy(model(images), targets, reduction="none")
        return identity + self.params["tv"] * total_variation(images)


class Gmi(ModelInversionAttack):
    """Zhang et al.'s generative model inversion with a GAN prior from the public pool."""

    name = "gmi"
    parameters = {
        "gan_steps": Parameter(GAN_STEPS, 0, 1_000_000, "GAN training steps on the public pool"),
        "iterations": Parameter(300, 1, 100_000, "Adam steps on the latents"),
        "lr": Parameter(0.1, 1e-6, 10.0, "Adam learning rate on the latents"),
        "prior_weight": Parameter(0.1, 0.0, 1000.0, "weight of the discriminator's -log D against the "
                                                     "target's cross-entropy"),
    }

    def reconstruct(self, access: ModelAccess, target_class: int, count: int, seed: int) -> Reconstruction:
        _check_request(access, target_class, count)
        started = time.perf_counter()
        kept = access.public_labels != target_class
        model = access.model.eval()
        gan, gan_record = self.prior(access.public_images[kept], seed, access.cache, str(_device(model)))
        images = invert_latents(gan, model, target_class, count, iterations=self.params["iterations"],
                                lr=self.params["lr"], prior_weight=self.params["prior_weight"], seed=seed)
        objective = inversion_objective(gan, model, images, target_class, self.params["prior_weight"])
        details = {"gan": gan_record, "gan_classes": sorted(map(int, np.unique(access.public_labels[kept]))),
                   "final_objective": float(objective.mean())}
        return Reconstruction(images, np.full(count, target_class, dtype=np.int64),
                              time.perf_counter() - started, details)

    def prior(self, images: np.ndarray, seed: int, cache: PreparationCache | None,
              device: str) -> tuple[TrainedGan, dict[str, Any]]:
        """The GAN trained on exactly `images` on `device` (from `cache` when it holds one for
        them), and what to record of it."""
        steps = self.params["gan_steps"]
        if cache is None:
            gan = train_gan(images, seed, steps, device=device)
            return gan, {**gan.details(), "reused": False}
        key = content_key(GAN_KIND, images=images, seed=seed, steps=steps, batch_size=GAN_BATCH, lr=GAN_LR,
                          latent_dim=LATENT_DIM, device=device)

        def build(folder: Path) -> Prepared:
            gan = train_gan(images, seed, steps, device=device)
            return Prepared(gan.arrays(), gan.details())

        prepared, record = cache.get_or_build(GAN_KIND, key, build)
        return TrainedGan.from_arrays(prepared.arrays, prepared.details), record.to_dict()

