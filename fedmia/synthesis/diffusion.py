"""A small DDPM trained on one client's private images, sampled with few-step DDIM (seed 000).

The network is diffusers' `UNet2DModel`, trained to predict the noise added by a linear-beta DDPM
forward process (`DDPMScheduler`); samples come from a deterministic DDIM sampler (eta 0) over
`sample_steps` of the `timesteps`, so drawing thousands of samples on a CPU takes seconds, not the
1,000 network calls per image of ancestral DDPM sampling. Images enter and leave in fedmia's
storage range [0, 1]; the model works in [-1, 1].

Class-conditional models take `num_classes + 1` class embeddings: the extra index means "no
label". Training replaces a label by it with probability `uncond_prob`, so one network predicts
both the conditional and the unconditional noise, and sampling mixes them by classifier-free
guidance (Ho & Salimans 2022) in their convention, the one the seed's w = 1.8 comes from:
eps = (1 + w) eps_cond - w eps_uncond, so w = 0 is plain conditional sampling.

Everything random (initial weights, batches, timesteps, noise, dropout, label dropout) is drawn
from the seed, so a seed gives the same model and the same samples on a CPU.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from fedmia.errors import FedmiaError, one_line

#: Gradient-norm clip of every training step, as in the DDPM reference training.
GRAD_CLIP = 1.0
#: Weight of the newest loss in the exponential moving average reported as the final loss.
LOSS_SMOOTHING = 0.02
#: GroupNorm groups in every block, so `base_channels` must be a multiple of it.
NORM_GROUPS = 8
#: Key of fedmia's metadata in a saved model's safetensors header.
METADATA_KEY = "fedmia.diffusion"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class DiffusionRecipe:
    """How to train and sample one diffusion model.

    The schedule (timesteps 1000, betas 1e-4..0.02), dropout 0.15, guidance w = 1.8 and label
    dropout 0.1 are the seed's. Its lr of 1e-4 suits 70k iterations on a GPU; a CPU gets a few
    thousand steps, and there Adam at 2e-3 (after a short warm-up, then cosine decay to zero)
    reaches a lower denoising loss and clearer digits than 2e-4 in the same 1,500 steps (held-out
    loss 0.10 against 0.12 on the 8x8 digits). The sampled weights are a moving average of the
    trained ones (`ema_decay`), as in DDPM. The UNet has `levels` resolutions with
    `base_channels`, then twice as many at every lower level, and self-attention at the lowest
    one when `attention` is set.
    """

    train_steps: int = 1500
    batch_size: int = 32
    lr: float = 2e-3
    timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    dropout: float = 0.15
    ema_decay: float = 0.995
    conditional: bool = False
    guidance: float = 1.8
    uncond_prob: float = 0.1
    sample_steps: int = 25
    base_channels: int = 32
    levels: int = 2
    attention: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.train_steps >= 0, "train_steps must be >= 0"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (math.isfinite(self.lr) and self.lr > 0, "lr must be a positive number"),
            (self.timesteps >= 2, "timesteps must be >= 2"),
            (0 < self.beta_start < self.beta_end < 1, "betas must satisfy 0 < beta_start < beta_end < 1"),
            (0 <= self.dropout < 1, "dropout must be in [0, 1)"),
            (0 <= self.ema_decay < 1, "ema_decay must be in [0, 1)"),
            (math.isfinite(self.guidance) and self.guidance >= 0, "guidance must be a number >= 0"),
            (0 <= self.uncond_prob < 1, "uncond_prob must be in [0, 1)"),
            (1 <= self.sample_steps <= self.timesteps, "sample_steps must be in 1..timesteps"),
            (self.base_channels >= NORM_GROUPS and self.base_channels % NORM_GROUPS == 0,
             f"base_channels must be a positive multiple of {NORM_GROUPS}"),
            (1 <= self.levels <= 5, "levels must be in 1..5"),
        ]
        for ok, problem in checks:
            if not ok:
                raise FedmiaError(f"diffusion recipe: {problem}; fix the diffusion settings")

    @classmethod
    def for_shape(cls, image_shape: tuple[int, int, int], **overrides: object) -> DiffusionRecipe:
        """CPU-sized defaults for an image shape. Small images such as the 8x8 digits: two
        levels of 32 and 64 channels, 1,500 steps (recognisable digits in about two minutes on
        one core). Larger ones such as Fashion-MNIST: three levels (28x28 runs at 28, 14 and 7
        pixels) of 16, 32 and 32 channels, whose steps still cost about three times as much,
        and 2,000 steps (recognisable garments in about seven minutes on one core)."""
        _, height, width = image_shape
        sized = {"levels": 2, "train_steps": 1500} if max(height, width) <= 16 else {
            "levels": 3, "train_steps": 2000, "base_channels": 16}
        try:
            return cls(**{**sized, **overrides})  # type: ignore[arg-type]
        except TypeError as error:
            raise FedmiaError(f"diffusion recipe: {one_line(error)}; use the DiffusionRecipe fields") from None

    def channels(self) -> tuple[int, ...]:
        return tuple(self.base_channels * min(2**level, 2) for level in range(self.levels))


@dataclass
class TrainedDiffusion:
    """A trained UNet with what sampling and caching need: the recipe, the image shape
    (C, H, W), the number of classes, and how the training went."""

    unet: UNet2DModel
    recipe: DiffusionRecipe
    image_shape: tuple[int, int, int]
    num_classes: int
    steps: int
    seconds: float
    final_loss: float

    def save(self, path: Path | str) -> None:
        """One safetensors file: the weights, and everything else as JSON in its header."""
        metadata = {"format": FORMAT_VERSION, "recipe": asdict(self.recipe), "image_shape": list(self.image_shape),
                    "num_classes": self.num_classes, "steps": self.steps, "seconds": self.seconds,
                    "final_loss": self.final_loss}
        weights = {name: tensor.detach().cpu().contiguous() for name, tensor in self.unet.state_dict().items()}
        save_file(weights, str(path), metadata={METADATA_KEY: json.dumps(metadata)})

    @classmethod
    def load(cls, path: Path | str, device: str = "cpu") -> TrainedDiffusion:
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = json.loads((handle.metadata() or {})[METADATA_KEY])
            weights = load_file(str(path))
        except (OSError, SafetensorError, KeyError, json.JSONDecodeError) as error:
            raise FedmiaError(f"cannot read the diffusion model {str(path)!r} ({one_line(error)}); "
                              "delete it so it is trained again") from None
        if metadata.get("format") != FORMAT_VERSION:
            raise FedmiaError(f"diffusion model {str(path)!r} has format {metadata.get('format')!r}, "
                              f"not {FORMAT_VERSION}; delete it so it is trained again")
        recipe = DiffusionRecipe(**metadata["recipe"])
        shape = tuple(metadata["image_shape"])
        unet = build_unet(recipe, shape, metadata["num_classes"])  # type: ignore[arg-type]
        unet.load_state_dict(weights)
        return cls(unet.to(_device(device)).eval(), recipe, shape, metadata["num_classes"],  # type: ignore[arg-type]
                   metadata["steps"], metadata["seconds"], metadata["final_loss"])


@dataclass(frozen=True)
class SampleBatch:
    """Generated images (count, C, H, W) in [0, 1], the labels they were conditioned on
    (None for an unconditional model) and the seconds sampling took."""

    images: np.ndarray
    labels: np.ndarray | None
    seconds: float

    @property
    def per_second(self) -> float:
        return len(self.images) / self.seconds if self.seconds > 0 else math.inf


def padded_size(size: int, levels: int) -> int:
    """The UNet halves the image `levels - 1` times, so its side must be a multiple of
    2^(levels - 1); images are padded up to that and cropped back after sampling."""
    multiple = 2 ** (levels - 1)
    return -(-size // multiple) * multiple


def build_unet(recipe: DiffusionRecipe, image_shape: tuple[int, int, int], num_classes: int) -> UNet2DModel:
    """The recipe's UNet for an image shape, with fresh weights from torch's global generator."""
    channels, height, width = image_shape
    levels = recipe.levels
    with_attention = [recipe.attention and level == levels - 1 for level in range(levels)]
    return UNet2DModel(
        sample_size=(padded_size(height, levels), padded_size(width, levels)),
        in_channels=channels, out_channels=channels, block_out_channels=recipe.channels(),
        layers_per_block=1, norm_num_groups=NORM_GROUPS, dropout=recipe.dropout,
        down_block_types=tuple("AttnDownBlock2D" if attn else "DownBlock2D" for attn in with_attention),
        up_block_types=tuple("AttnUpBlock2D" if attn else "UpBlock2D" for attn in reversed(with_attention)),
        num_class_embeds=num_classes + 1 if recipe.conditional else None,
    )


def train_diffusion(images: np.ndarray, labels: np.ndarray | None, num_classes: int, recipe: DiffusionRecipe,
                    seed: int, device: str = "cpu",
                    progress: Callable[[int, int], None] | None = None) -> TrainedDiffusion:
    """Train a UNet to predict the noise of the DDPM forward process on `images` (float32
    (n, C, H, W) in [0, 1]); `labels` are needed only by a conditional recipe. `progress` is
    called with (steps done, total) after every step. `recipe.train_steps = 0` gives the
    initial network, the untrained baseline."""
    shape = _check_images(images, "images")
    if num_classes < 1:
        raise FedmiaError(f"num_classes must be >= 1, got {num_classes}")
    targets = _check_labels(labels, len(images), num_classes) if recipe.conditional else None
    torch_device = _device(device)
    started = time.perf_counter()
    with _seeded(seed, torch_device):
        unet = build_unet(recipe, shape, num_classes).to(torch_device).train()
        generator = torch.Generator().manual_seed(seed)
        data = _to_model_space(images, recipe.levels).to(torch_device)
        average, final_loss = _fit(unet, data, targets, num_classes, recipe, generator, progress)
    return TrainedDiffusion(average.eval(), recipe, shape, num_classes, recipe.train_steps,
                            time.perf_counter() - started, final_loss)


def _fit(unet: UNet2DModel, data: torch.Tensor, targets: torch.Tensor | None, num_classes: int,
         recipe: DiffusionRecipe, generator: torch.Generator,
         progress: Callable[[int, int], None] | None) -> tuple[UNet2DModel, float]:
    """The training loop; returns the moving average of the weights and the smoothed loss of
    the last steps (nan with no steps)."""
    average = copy.deepcopy(unet)
    optimizer = torch.optim.Adam(unet.parameters(), lr=recipe.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, recipe.train_steps))
    scheduler = _training_scheduler(recipe)
    smoothed = math.nan
    for step in range(recipe.train_steps):
        batch = torch.randint(0, len(data), (recipe.batch_size,), generator=generator)
        loss = _denoising_loss(unet, scheduler, data[batch.to(data.device)],
                               _dropped_labels(targets, batch, num_classes, recipe.uncond_prob, generator),
                               recipe.timesteps, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(unet.parameters(), GRAD_CLIP)
        optimizer.step()
        schedule.step()
        _update_average(average, unet, step, recipe.ema_decay)
        value = float(loss.detach())
        smoothed = value if step == 0 else (1 - LOSS_SMOOTHING) * smoothed + LOSS_SMOOTHING * value
        if progress is not None:
            progress(step + 1, recipe.train_steps)
    return average, smoothed


def _update_average(average: nn.Module, unet: nn.Module, step: int, decay: float) -> None:
    """Exponential moving average of the weights, whose decay grows as (1 + step) / (10 + step)
    up to `decay` so the random initial weights are forgotten within a short run."""
    rate = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for averaged, current in zip(average.parameters(), unet.parameters()):
            averaged.lerp_(current, 1 - rate)


def _lr_factor(step: int, total: int) -> float:
    """Linear warm-up over the first 5% of the steps (Adam's first steps are large), then
    cosine decay to zero, which settles the weights in a few thousand steps."""
    warmup = max(1, total // 20)
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _training_scheduler(recipe: DiffusionRecipe) -> DDPMScheduler:
    """The DDPM forward process: linear betas from beta_start to beta_end over `timesteps`."""
    return DDPMScheduler(num_train_timesteps=recipe.timesteps, beta_start=recipe.beta_start,
                         beta_end=recipe.beta_end, beta_schedule="linear")


def _dropped_labels(targets: torch.Tensor | None, batch: torch.Tensor, num_classes: int, uncond_prob: float,
                    generator: torch.Generator) -> torch.Tensor | None:
    """The batch's labels with each replaced by the "no label" index with `uncond_prob`."""
    if targets is None:
        return None
    dropped = torch.rand(len(batch), generator=generator) < uncond_prob
    return torch.where(dropped.to(targets.device), num_classes, targets[batch.to(targets.device)])


def _denoising_loss(unet: UNet2DModel, scheduler: DDPMScheduler, clean: torch.Tensor,
                    class_labels: torch.Tensor | None, timesteps: int, generator: torch.Generator) -> torch.Tensor:
    """Mean squared error of the predicted noise at uniformly drawn timesteps."""
    noise = torch.randn(clean.shape, generator=generator).to(clean.device)
    steps = torch.randint(0, timesteps, (len(clean),), generator=generator).to(clean.device)
    predicted = unet(scheduler.add_noise(clean, noise, steps), steps, class_labels=class_labels).sample
    return nn.functional.mse_loss(predicted, noise)


def denoising_loss(trained: TrainedDiffusion, images: np.ndarray, seed: int, labels: np.ndarray | None = None,
                   device: str = "cpu") -> float:
    """The training objective of `trained` on `images`, with noise and timesteps drawn from
    `seed` (one draw per image) and dropout off: a fixed yardstick across models."""
    _check_images(images, "images", trained.image_shape)
    targets = _check_labels(labels, len(images), trained.num_classes) if trained.recipe.conditional else None
    torch_device = _device(device)
    unet = trained.unet.to(torch_device).eval()
    generator = torch.Generator().manual_seed(seed)
    data = _to_model_space(images, trained.recipe.levels).to(torch_device)
    labels_on_device = None if targets is None else targets.to(torch_device)
    with torch.inference_mode():
        loss = _denoising_loss(unet, _training_scheduler(trained.recipe), data, labels_on_device,
                               trained.recipe.timesteps, generator)
    return float(loss)


def sample(trained: TrainedDiffusion, count: int, seed: int, device: str = "cpu", labels: np.ndarray | None = None,
           batch_size: int = 256, guidance: float | None = None) -> SampleBatch:
    """`count` images from `trained` by DDIM (eta 0) over `recipe.sample_steps` steps.

    A conditional model samples the given `labels`, or labels balanced over the classes in a
    seeded random order, with classifier-free guidance `guidance` (default: the recipe's). The
    initial noise of all images is drawn up front from `seed`, so the images depend on
    `batch_size` only through float rounding.
    """
    if count < 1 or batch_size < 1:
        raise FedmiaError(f"sample needs count >= 1 and batch_size >= 1, got {count} and {batch_size}")
    recipe = trained.recipe if guidance is None else replace(trained.recipe, guidance=guidance)
    torch_device = _device(device)
    targets = _sample_labels(trained, count, seed, labels)
    channels, height, width = trained.image_shape
    padded = (channels, padded_size(height, recipe.levels), padded_size(width, recipe.levels))
    noise = torch.randn((count, *padded), generator=torch.Generator().manual_seed(seed))
    unet = trained.unet.to(torch_device).eval()
    started = time.perf_counter()
    with torch.inference_mode():
        chunks = [_ddim(unet, recipe, noise[start:start + batch_size].to(torch_device),
                        None if targets is None else targets[start:start + batch_size].to(torch_device),
                        trained.num_classes)
                  for start in range(0, count, batch_size)]
    images = torch.cat(chunks)[:, :, :height, :width]
    pixels = ((images.float().cpu().numpy() + 1) / 2).clip(0, 1).astype(np.float32)
    return SampleBatch(pixels, None if targets is None else targets.numpy(), time.perf_counter() - started)


def _ddim(unet: UNet2DModel, recipe: DiffusionRecipe, latents: torch.Tensor, targets: torch.Tensor | None,
          num_classes: int) -> torch.Tensor:
    """Deterministic DDIM from noise to images in [-1, 1]. Timesteps are "trailing" (the first
    step starts at the last timestep, T - 1) and the last step lands on the clean image, the
    spacing that keeps few-step sampling unbiased (Lin et al. 2024)."""
    scheduler = DDIMScheduler(num_train_timesteps=recipe.timesteps, beta_start=recipe.beta_start,
                              beta_end=recipe.beta_end, beta_schedule="linear", clip_sample=True,
                              set_alpha_to_one=True, timestep_spacing="trailing")
    scheduler.set_timesteps(recipe.sample_steps)
    for step in scheduler.timesteps:
        noise = _guided_noise(unet, latents, step, targets, num_classes, recipe.guidance)
        latents = scheduler.step(noise, step, latents, eta=0.0).prev_sample
    return latents


def _guided_noise(unet: UNet2DModel, latents: torch.Tensor, step: torch.Tensor, targets: torch.Tensor | None,
                  num_classes: int, guidance: float) -> torch.Tensor:
    """The predicted noise; conditional: (1 + w) eps_cond - w eps_uncond from one doubled batch."""
    if targets is None:
        return unet(latents, step).sample
    unlabelled = torch.full_like(targets, num_classes)
    both = unet(torch.cat([latents, latents]), step, class_labels=torch.cat([targets, unlabelled])).sample
    conditional, unconditional = both.chunk(2)
    return (1 + guidance) * conditional - guidance * unconditional


def _sample_labels(trained: TrainedDiffusion, count: int, seed: int, labels: np.ndarray | None) -> torch.Tensor | None:
    if not trained.recipe.conditional:
        if labels is not None:
            raise FedmiaError("labels were given to an unconditional diffusion model; "
                              "train it with conditional=True or sample without labels")
        return None
    if labels is None:
        balanced = np.arange(count) % trained.num_classes
        return torch.from_numpy(np.random.default_rng(seed).permutation(balanced).astype(np.int64))
    return _check_labels(labels, count, trained.num_classes)


def _to_model_space(images: np.ndarray, levels: int) -> torch.Tensor:
    """[0, 1] -> [-1, 1], padded on the bottom and right with -1 (black) to the UNet's size."""
    tensor = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)) * 2 - 1
    height, width = tensor.shape[2:]
    pad = (0, padded_size(width, levels) - width, 0, padded_size(height, levels) - height)
    return nn.functional.pad(tensor, pad, value=-1.0)


def _check_images(images: np.ndarray, name: str,
                  shape: tuple[int, int, int] | None = None) -> tuple[int, int, int]:
    if not isinstance(images, np.ndarray) or images.ndim != 4 or len(images) == 0:
        got = images.shape if isinstance(images, np.ndarray) else type(images).__name__
        raise FedmiaError(f"{name} must be a non-empty array (n, C, H, W), got {got}")
    if shape is not None and tuple(images.shape[1:]) != shape:
        raise FedmiaError(f"{name} have shape {tuple(images.shape[1:])}, the model was trained on {shape}")
    if not np.all(np.isfinite(images)) or images.min() < 0 or images.max() > 1:
        raise FedmiaError(f"{name} must be finite and in [0, 1] (fedmia's pixel range); rescale them")
    return tuple(int(size) for size in images.shape[1:])  # type: ignore[return-value]


def _check_labels(labels: np.ndarray | None, count: int, num_classes: int) -> torch.Tensor:
    if labels is None:
        raise FedmiaError("a conditional diffusion model needs labels; pass them or use conditional=False")
    values = np.asarray(labels)
    if values.shape != (count,) or not np.issubdtype(values.dtype, np.integer):
        raise FedmiaError(f"labels must be {count} integers, got {values.dtype} of shape {values.shape}")
    if count and (values.min() < 0 or values.max() >= num_classes):
        raise FedmiaError(f"labels must be in 0..{num_classes - 1}, found {values.min()}..{values.max()}")
    return torch.from_numpy(values.astype(np.int64))


def _device(device: str) -> torch.device:
    try:
        return torch.device(device)
    except RuntimeError as error:
        raise FedmiaError(f"unknown device {device!r} ({one_line(error)}); use 'cpu' or 'cuda'") from None


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global generators, which weight init and dropout draw from, and restore
    them afterwards so training does not shift the caller's random stream."""
    devices = []
    if device.type == "cuda":
        devices = [torch.cuda.current_device() if device.index is None else device.index]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
