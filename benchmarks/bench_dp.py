"""Cost of one DP-SGD step relative to a non-private step, per Opacus grad-sample mode.

Default model (`cnn` on 8x8 digits, DP-compatible form), CPU. Writes a JSON table.
Run: `python benchmarks/bench_dp.py [--out FILE] [--repeats N]`.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedmia.data import load_dataset
from fedmia.defenses import ClientData, LayeredAdaptiveDP, RoundContext
from fedmia.models import build_model
from fedmia.training import TrainingPlan

warnings.filterwarnings("ignore")
MODES = ("hooks", "functorch", "ew", "ghost")


def timed_steps(step, repeats: int) -> float:
    for _ in range(3):
        step()
    started = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - started) / repeats


def plain_step_seconds(images, labels, repeats: int) -> float:
    model = build_model("cnn", (1, 8, 8), 10, dp_compatible=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)

    def step():
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()

    return timed_steps(step, repeats)


def dp_step_seconds(images, labels, mode: str, repeats: int) -> float:
    model = build_model("cnn", (1, 8, 8), 10, dp_compatible=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    loader = DataLoader(TensorDataset(images, labels), batch_size=len(labels))
    criterion = nn.CrossEntropyLoss()
    engine = PrivacyEngine()
    made = engine.make_private(module=model, optimizer=optimizer, data_loader=loader, criterion=criterion,
                               noise_multiplier=1.0, max_grad_norm=1.0, poisson_sampling=False,
                               grad_sample_mode=mode)
    private_model, private_optimizer = made[0], made[1]
    loss_fn = made[2] if mode == "ghost" else criterion

    def step():
        private_optimizer.zero_grad()
        loss_fn(private_model(images), labels).backward()
        private_optimizer.step()

    return timed_steps(step, repeats)


def ladp_step_seconds(batch_size: int, repeats: int) -> float:
    digits = load_dataset("digits")
    data = ClientData(0, digits.images[: batch_size * 4], digits.labels[: batch_size * 4], 10)
    defense = LayeredAdaptiveDP(epsilon=8.0)
    model = build_model("cnn", (1, 8, 8), 10, dp_compatible=True)
    context = RoundContext(1, 1000, TrainingPlan(local_epochs=1, batch_size=batch_size), 0)
    plan = defense.round_plan(data, context)
    allocation = defense.allocate(model, (1, 8, 8), plan.noise_multiplier, 0)
    from fedmia.defenses.ladp import noisy_layered_sgd

    started = time.perf_counter()
    for _ in range(repeats):
        noisy_layered_sgd(model, data, context, plan, allocation)
    return (time.perf_counter() - started) / (repeats * plan.steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/dp_step.json"))
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    torch.manual_seed(0)
    digits = load_dataset("digits")
    rows = []
    for batch in (16, 64):
        images = torch.as_tensor(digits.images[:batch])
        labels = torch.as_tensor(digits.labels[:batch])
        plain = plain_step_seconds(images, labels, args.repeats)
        for mode in MODES:
            try:
                seconds = dp_step_seconds(images, labels, mode, args.repeats)
                rows.append({"batch": batch, "mode": mode, "plain_ms": plain * 1e3, "dp_ms": seconds * 1e3,
                             "ratio": seconds / plain})
            except Exception as error:  # a mode that cannot handle this model is a result too
                rows.append({"batch": batch, "mode": mode, "error": f"{type(error).__name__}: {error}"[:160]})
        ladp = ladp_step_seconds(batch, max(2, args.repeats // 10))
        rows.append({"batch": batch, "mode": "ladp (hooks, per-layer)", "plain_ms": plain * 1e3,
                     "dp_ms": ladp * 1e3, "ratio": ladp / plain})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": "cpu", "threads": torch.get_num_threads(), "rows": rows}, indent=2))
    for row in rows:
        if "error" in row:
            print(f"batch {row['batch']:3d}  {row['mode']:24s}  unsupported: {row['error']}")
        else:
            print(f"batch {row['batch']:3d}  {row['mode']:24s}  plain {row['plain_ms']:6.2f} ms  "
                  f"dp {row['dp_ms']:6.2f} ms  ratio {row['ratio']:.2f}x")


if __name__ == "__main__":
    main()
