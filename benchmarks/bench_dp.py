"""Cost of one DP step relative to a plain SGD step, on the default and the Fashion-MNIST model.

For each input shape (8x8 digits, 28x28 Fashion-MNIST; the DP-compatible `cnn`) and batch size
(16, 64) it times: a plain step; Opacus's `PrivacyEngine` in each grad-sample mode; fedmia's own
clipped-noisy step (`fedmia.privacy.gradients`), flat (what `dpsgd` runs) and per layer (what
`ladp` runs). Timing needs only the shapes, so inputs are seeded random tensors.
Run: `python benchmarks/bench_dp.py [--out FILE] [--repeats N]`.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedmia.models import build_model
from fedmia.privacy.gradients import ClipGroup, PerSampleGradients

warnings.filterwarnings("ignore")
OPACUS_MODES = ("hooks", "functorch", "ew", "ghost")
SHAPES = {"digits cnn (1x8x8)": (1, 8, 8), "fashion-mnist cnn (1x28x28)": (1, 28, 28)}
BATCHES = (16, 64)


def timed(step: Callable[[], None], repeats: int) -> float:
    """Seconds per call, after three warm-up calls."""
    for _ in range(3):
        step()
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - started) / repeats


def new_model(shape: tuple[int, int, int]) -> nn.Module:
    return build_model("cnn", shape, 10, dp_compatible=True, seed=0)


def plain_step(shape, images, labels) -> Callable[[], None]:
    model = new_model(shape)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()

    return step


def opacus_step(shape, images, labels, mode: str) -> Callable[[], None]:
    model = new_model(shape)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    made = PrivacyEngine().make_private(
        module=model, optimizer=optimizer, data_loader=DataLoader(TensorDataset(images, labels), batch_size=len(labels)),
        criterion=criterion, noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=False,
        grad_sample_mode=mode)
    private_model, private_optimizer = made[0], made[1]
    loss_fn = made[2] if mode == "ghost" else criterion

    def step() -> None:
        private_optimizer.zero_grad()
        loss_fn(private_model(images), labels).backward()
        private_optimizer.step()

    return step


def fedmia_step(shape, images, labels, per_layer: bool) -> Callable[[], None]:
    model = new_model(shape)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    gradients = PerSampleGradients(model)
    names = list(gradients.layers)
    groups = ([ClipGroup((name,), 1.0, 2.0) for name in names] if per_layer
              else [ClipGroup(tuple(names), 1.0, 1.0)])
    generator = torch.Generator().manual_seed(0)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        gradients.set_noisy_gradients(images, labels, groups, float(len(labels)), generator)
        optimizer.step()

    return step


def measure(repeats: int) -> list[dict]:
    rows = []
    for model_name, shape in SHAPES.items():
        for batch in BATCHES:
            generator = torch.Generator().manual_seed(0)
            images = torch.rand((batch, *shape), generator=generator)
            labels = torch.randint(0, 10, (batch,), generator=generator)
            plain = timed(plain_step(shape, images, labels), repeats)
            candidates = {f"opacus {mode}": (lambda mode=mode: opacus_step(shape, images, labels, mode))
                          for mode in OPACUS_MODES}
            candidates["fedmia flat (dpsgd)"] = lambda: fedmia_step(shape, images, labels, per_layer=False)
            candidates["fedmia per-layer (ladp)"] = lambda: fedmia_step(shape, images, labels, per_layer=True)
            for name, build in candidates.items():
                row = {"model": model_name, "batch": batch, "mode": name, "plain_ms": plain * 1e3}
                try:
                    seconds = timed(build(), repeats)
                    rows.append({**row, "dp_ms": seconds * 1e3, "ratio": seconds / plain})
                except Exception as error:  # a mode that cannot handle this model is a result too
                    rows.append({**row, "error": f"{type(error).__name__}: {error}"[:160]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/dp_step.json"))
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    rows = measure(args.repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": "cpu", "threads": torch.get_num_threads(), "rows": rows}, indent=2))
    for row in rows:
        result = (f"unsupported: {row['error']}" if "error" in row else
                  f"plain {row['plain_ms']:6.2f} ms  dp {row['dp_ms']:6.2f} ms  ratio {row['ratio']:.2f}x")
        print(f"{row['model']:28s} batch {row['batch']:3d}  {row['mode']:24s}  {result}")


if __name__ == "__main__":
    main()
