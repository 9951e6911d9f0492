"""Cost of the diffusion engine on a CPU: training steps/s and DDIM sampling images/s.

For the digits size (1x8x8) and the Fashion-MNIST size (1x28x28), each with its default recipe
(`DiffusionRecipe.for_shape`), it times training steps (after warm-up steps) and sampling with
the recipe's DDIM steps, unconditional and class-conditional (classifier-free guidance runs
the network on a doubled batch). Timing needs only the shapes, so the images are seeded noise.
`--quality N ...` also trains the digits recipe on real digits for N steps each and scores its
samples: how many steps give recognisable digits (minutes more).
Run: `python benchmarks/bench_diffusion.py [--out FILE] [--threads N] [--quality 500 1500]`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import asdict, replace
from pathlib import Path

import diffusers
import numpy as np
import torch

from fedmia.synthesis import DiffusionRecipe, denoising_loss, sample, train_diffusion
from fedmia.synthesis.diffusion import build_unet
from fedmia.synthesis.memorization import nearest_neighbours

#: Shape -> (timed training steps, sampled images): a couple of minutes in all on two cores.
SHAPES = {"digits (1x8x8)": ((1, 8, 8), 60, 256), "fashion-mnist (1x28x28)": ((1, 28, 28), 20, 128)}
WARMUP_STEPS = 5
CLASSES = 10


def machine() -> dict:
    return {"device": "cpu", "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(), "python": platform.python_version(),
            "torch": torch.__version__, "diffusers": diffusers.__version__,
            "load_average_at_start": os.getloadavg()[0]}


def training_rate(recipe: DiffusionRecipe, images: np.ndarray, labels: np.ndarray, steps: int) -> float:
    """Steps per second after `WARMUP_STEPS`, from the progress callback's clock."""
    stamps: list[float] = []
    train_diffusion(images, labels, CLASSES, replace(recipe, train_steps=WARMUP_STEPS + steps), seed=0,
                    progress=lambda done, total: stamps.append(time.perf_counter()))
    return steps / (stamps[-1] - stamps[WARMUP_STEPS - 1])


def measure_shape(name: str, shape: tuple[int, int, int], steps: int, count: int) -> dict:
    generator = np.random.default_rng(0)
    images = generator.random((512, *shape), dtype=np.float32)
    labels = generator.integers(0, CLASSES, 512)
    recipe = DiffusionRecipe.for_shape(shape)
    rate = training_rate(recipe, images, labels, steps)
    row: dict = {"shape": name, "recipe": asdict(recipe),
                 "parameters": sum(weight.numel() for weight in build_unet(recipe, shape, CLASSES).parameters()),
                 "train_steps_per_s": rate, "default_training_s": recipe.train_steps / rate}
    for conditional in (False, True):
        model = train_diffusion(images, labels, CLASSES, replace(recipe, conditional=conditional, train_steps=0),
                                seed=0)
        sample(model, 8, seed=0)
        kind = "conditional" if conditional else "unconditional"
        row[f"{kind}_images_per_s"] = sample(model, count, seed=1).per_second
    return row


def quality(steps_list: list[int]) -> dict:
    """The digits recipe trained on 1,000 real digits for each step count: held-out denoising
    loss, a logistic regression's mean confidence on 500 samples (real held-out digits score
    `real_confidence`), and the mean distance of a sample to its nearest training digit."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)[:, None]
    flat = images.reshape(len(images), -1)
    train, held = slice(0, 1000), slice(1000, 1500)
    classifier = LogisticRegression(max_iter=2000).fit(flat[train], data.target[train])
    result: dict = {"real_confidence": float(classifier.predict_proba(flat[held]).max(axis=1).mean()),
                    "real_nearest_distance": float(nearest_neighbours(flat[held], flat[train])[0].mean()),
                    "rows": []}
    for steps in [0, *steps_list]:
        model = train_diffusion(images[train], None, CLASSES, DiffusionRecipe.for_shape((1, 8, 8), train_steps=steps),
                                seed=0)
        samples = sample(model, 500, seed=1).images.reshape(500, -1)
        result["rows"].append({
            "train_steps": steps, "train_s": model.seconds,
            "held_out_loss": denoising_loss(model, images[held], seed=2),
            "confidence": float(classifier.predict_proba(samples).max(axis=1).mean()),
            "nearest_distance": float(nearest_neighbours(samples, flat[train])[0].mean())})
        print(result["rows"][-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/diffusion.json"))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--quality", type=int, nargs="*", default=[], metavar="STEPS")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result: dict = {"machine": machine(), "rows": []}
    for name, (shape, steps, count) in SHAPES.items():
        result["rows"].append(measure_shape(name, shape, steps, count))
        row = result["rows"][-1]
        print(f"{name:24s} train {row['train_steps_per_s']:6.1f} steps/s "
              f"(default {row['recipe']['train_steps']} steps: {row['default_training_s']:5.0f} s)  "
              f"sample {row['unconditional_images_per_s']:6.1f} img/s, "
              f"conditional {row['conditional_images_per_s']:6.1f} img/s")
    if args.quality:
        result["quality"] = quality(args.quality)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
