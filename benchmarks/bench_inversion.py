"""Gradient inversion with default parameters: seconds, PSNR, SSIM and label accuracy per
attack on one client's round of 8x8 digits with the default `cnn` (untrained, seed 0), FedSGD at
batch 1, 4 and 16, and FedAvg (batch 4, 1 epoch of batches of 2); plus the cost of one FedSGD
batch-1 reconstruction on 28x28 Fashion-MNIST, where that dataset is installed.

Run: `python benchmarks/bench_inversion.py [--out FILE]` (about two minutes on one CPU thread).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from fedmia.data import load_dataset
from fedmia.errors import FedmiaError
from fedmia.inversion.gradient import GRADIENT_ATTACKS, observe_round
from fedmia.inversion.metrics import score_reconstruction
from fedmia.models import build_model
from fedmia.training import TrainingPlan

#: Case name: (records, local epochs, batch size).
CASES = {
    "FedSGD batch 1": (1, 1, 1),
    "FedSGD batch 4": (4, 1, 4),
    "FedSGD batch 16": (16, 1, 16),
    "FedAvg batch 4 (1 epoch of batches of 2)": (4, 1, 2),
}


def attack_rows(dataset_name: str, cases: dict[str, tuple[int, int, int]],
                attacks: tuple[str, ...]) -> list[dict]:
    """One row per case and attack: the client holds the dataset's first records."""
    data = load_dataset(dataset_name)
    rows = []
    for case, (records, epochs, batch_size) in cases.items():
        images, labels = data.images[:records], data.labels[:records]
        model = build_model("cnn", data.input_shape, data.num_classes, seed=0)
        update = observe_round(model, images, labels, TrainingPlan(local_epochs=epochs, batch_size=batch_size),
                               0, data.num_classes)
        mean_image = np.full_like(images, data.images.mean())
        baseline = score_reconstruction(mean_image, labels, images, labels).metrics
        for name in attacks:
            reconstruction = GRADIENT_ATTACKS[name]().reconstruct(update, seed=0)
            metrics = score_reconstruction(reconstruction.images, reconstruction.labels, images, labels).metrics
            rows.append({"dataset": dataset_name, "case": case, "attack": name,
                         "seconds": round(reconstruction.seconds, 2), "psnr": round(metrics.psnr, 2),
                         "ssim": round(metrics.ssim, 3), "label_accuracy": metrics.label_accuracy,
                         "mean_image_psnr": round(baseline.psnr, 2)})
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/inversion.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = attack_rows("digits", CASES, tuple(GRADIENT_ATTACKS))
    try:
        rows += attack_rows("fashion-mnist", {"FedSGD batch 1": (1, 1, 1)}, tuple(GRADIENT_ATTACKS))
    except FedmiaError as error:
        print(f"fashion-mnist skipped: {error}")
    defaults = {name: {key: spec.default for key, spec in attack.parameters.items()}
                for name, attack in GRADIENT_ATTACKS.items()}
    args.out.write_text(json.dumps({"device": "cpu", "threads": 1, "defaults": defaults, "rows": rows},
                                   indent=2) + "\n")


if __name__ == "__main__":
    main()
