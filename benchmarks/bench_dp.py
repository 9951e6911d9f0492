"""Cost of one DP step relative to a plain SGD step, on the default and the Fashion-MNIST model.

For each input shape (8x8 digits, 28x28 Fashion-MNIST; the DP-compatible `cnn`) and batch size
(16, 64) it times: a plain step; Opacus's `PrivacyEngine` in each grad-sample mode; fedmia's own
clipped-noisy step (`fedmia.privacy.gradients`), flat (what `dpsgd` runs) and per layer (what
`ladp` runs). Timing needs only the shapes, so inputs are seeded random tensors.

The machine may be shared and busy, so each candidate's steps alternate with plain steps (which
goes first alternates too) and the ratio is the median over pairs, in wall time and in CPU time
(`time.process_time`: what the process itself computed, unaffected by other processes taking
the cores; with more than one thread it also counts threads waiting for work). One thread by
default: a federation gives each client one core.
Run: `python benchmarks/bench_dp.py [--out FILE] [--repeats N] [--threads N]`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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


def one_step(step: Callable[[], None]) -> tuple[float, float]:
    """(wall, CPU) seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    step()
    return time.perf_counter() - wall, time.process_time() - cpu


def paired(plain: Callable[[], None], private: Callable[[], None], repeats: int) -> dict[str, float]:
    """Medians over `repeats` adjacent (plain, private) pairs, after three warm-up calls each."""
    for _ in range(3):
        plain()
        private()
    pairs = []
    for index in range(repeats):
        first, second = (plain, private) if index % 2 == 0 else (private, plain)
        timings = {first: one_step(first), second: one_step(second)}
        pairs.append((timings[plain], timings[private]))
    return {
        "plain_ms": statistics.median(p[0][0] for p in pairs) * 1e3,
        "dp_ms": statistics.median(p[1][0] for p in pairs) * 1e3,
        "ratio": statistics.median(p[1][0] / p[0][0] for p in pairs),
        "plain_cpu_ms": statistics.median(p[0][1] for p in pairs) * 1e3,
        "dp_cpu_ms": statistics.median(p[1][1] for p in pairs) * 1e3,
        "cpu_ratio": statistics.median(p[1][1] / p[0][1] for p in pairs if p[0][1] > 0),
    }


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
            plain = plain_step(shape, images, labels)
            candidates = {f"opacus {mode}": (lambda mode=mode: opacus_step(shape, images, labels, mode))
                          for mode in OPACUS_MODES}
            candidates["fedmia flat (dpsgd)"] = lambda: fedmia_step(shape, images, labels, per_layer=False)
            candidates["fedmia per-layer (ladp)"] = lambda: fedmia_step(shape, images, labels, per_layer=True)
            for name, build in candidates.items():
                row = {"model": model_name, "batch": batch, "mode": name}
                try:
                    rows.append({**row, **paired(plain, build(), repeats)})
                except Exception as error:  # a mode that cannot handle this model is a result too
                    rows.append({**row, "error": f"{type(error).__name__}: {error}"[:160]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/dp_step.json"))
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    rows = measure(args.repeats)
    machine = {"device": "cpu", "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
               "load_average_before": load_before, "load_average_after": os.getloadavg(),
               "torch": torch.__version__, "repeats": args.repeats}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**machine, "rows": rows}, indent=2))
    print(f"{machine['threads']} thread(s); load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after")
    for row in rows:
        result = (f"unsupported: {row['error']}" if "error" in row else
                  f"plain {row['plain_ms']:6.2f} ms  dp {row['dp_ms']:6.2f} ms  ratio {row['ratio']:5.2f}x wall, "
                  f"{row['cpu_ratio']:5.2f}x cpu")
        print(f"{row['model']:28s} batch {row['batch']:3d}  {row['mode']:24s}  {result}")


if __name__ == "__main__":
    main()
