"""What the preparation cache saves: a client's `diffusion-mixup` and `distill` preparation
(teacher, diffusion model, samples, memorization check), first built, then served from the
cache by a fresh defense, as a later round or a later run gets it (the in-process memo is
cleared, so the second call reads the entry from disk).

Run: `python benchmarks/bench_preparation.py [--out FILE]`; the target is a second call in
under 5% of the first's time.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from fedmia.data import load_dataset
from fedmia.defenses import ClientData, DefenseSpec, PrepareContext, PreparationCache
from fedmia.models import build_model
from fedmia.training import TrainingPlan

CASES = {
    "distill (digits, 150 records)": ("distill", {"teacher_epochs": 20}),
    "diffusion-mixup (digits, 150 records, 600 diffusion steps)": ("diffusion-mixup", {"diffusion_steps": 600}),
}


def timed_prepare(name: str, params: dict, client: ClientData, cache: PreparationCache) -> tuple[float, bool]:
    setup = PrepareContext(TrainingPlan(), 0, cache, lambda: build_model("cnn", (1, 8, 8), 10, seed=0))
    started = time.perf_counter()
    records = DefenseSpec(name, params).build().prepare(client, setup)
    return time.perf_counter() - started, all(record.reused for record in records)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/preparation.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    digits = load_dataset("digits")
    client = ClientData(0, digits.images[:150], digits.labels[:150], 10, digits.images[1400:1700],
                        digits.labels[1400:1700])
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        cache = PreparationCache(folder)
        for case, (name, params) in CASES.items():
            first, _ = timed_prepare(name, params, client, cache)
            PreparationCache._memo.clear()
            second, reused = timed_prepare(name, params, client, cache)
            rows.append({"case": case, "first_s": round(first, 3), "cached_s": round(second, 4),
                         "cached_fraction": round(second / first, 5), "reused": reused})
            print(rows[-1])
    args.out.write_text(json.dumps({"device": "cpu", "threads": 1, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
