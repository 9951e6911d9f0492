"""The simulation's own overhead: `simulate`'s training phase against the same work in one process.

Both sides run the same clients, rounds, local training (`fedmia.local.run_local_round`), FedAvg
and per-round test evaluation, from the same prepared run. The one-process side has no Flower,
Ray, messages or run-directory writes: the ratio is what the federation machinery costs.
Workloads: the default (digits, 20 clients, 5 rounds) and Fashion-MNIST (10 clients, 2 rounds,
1 local epoch; needs the `dataset-fashion-mnist` package, skipped without it).
Run: `python benchmarks/bench_overhead.py [--out FILE]`.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from fedmia.config import resolve_config
from fedmia.errors import FedmiaError
from fedmia.local import run_local_round
from fedmia.recorder import evaluate_on
from fedmia.run import PreparedRun, prepare_run, sample_clients
from fedmia.simulation import simulate

WORKLOADS = {
    "default (digits, 20 clients, 5 rounds)": {"clients": 20},
    "fashion-mnist (10 clients, 2 rounds, 1 local epoch)": {
        "dataset": "fashion-mnist", "clients": 10, "rounds": 2, "local_epochs": 1},
}
TARGETS = {"default (digits, 20 clients, 5 rounds)": 2.0,
           "fashion-mnist (10 clients, 2 rounds, 1 local epoch)": 1.25}


def fedavg(uploads: list[tuple[int, dict[str, torch.Tensor]]]) -> dict[str, torch.Tensor]:
    """Example-weighted mean of the uploads, as Flower's FedAvg computes it."""
    total = sum(weight for weight, _ in uploads)
    return {name: sum(state[name] * (weight / total) for weight, state in uploads)
            for name in uploads[0][1]}


def one_process_training(run: PreparedRun) -> float:
    """Seconds for every round of the federation's work, in this process."""
    config = run.config
    per_round = max(1, int(config.clients * config.fraction))
    test_images, test_labels = run.images(run.split.test), run.labels(run.split.test)
    global_state = run.new_model().state_dict()
    defense_states: dict[int, Any] = {}
    started = time.perf_counter()
    for server_round in range(1, config.rounds + 1):
        uploads = []
        for client in sample_clients(config.clients, per_round, config.seed, server_round):
            result = run_local_round(run, client, global_state, server_round, defense_states.get(client))
            defense_states[client] = result.defense_state
            uploads.append((result.report.num_examples, result.state))
        global_state = fedavg(uploads)
        evaluate_on(run.model_from_state(global_state), test_images, test_labels, config.device)
    return time.perf_counter() - started


def measure(name: str, settings: dict[str, Any], folder: Path) -> dict[str, Any]:
    config = resolve_config(None, {**settings, "out": str(folder / "simulated")})
    results = simulate(config)
    baseline = resolve_config(None, {**settings, "out": str(folder / "baseline")})
    single = one_process_training(prepare_run(baseline))
    simulated = results["timing"]["training_s"]
    return {"workload": name, "simulate_training_s": simulated, "one_process_s": single,
            "ratio": simulated / single, "target_ratio": TARGETS[name],
            "timing": results["timing"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/overhead.json"))
    args = parser.parse_args()
    rows = []
    for name, settings in WORKLOADS.items():
        with tempfile.TemporaryDirectory() as folder:
            try:
                rows.append(measure(name, settings, Path(folder)))
            except FedmiaError as error:
                rows.append({"workload": name, "skipped": str(error)})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"threads": torch.get_num_threads(), "rows": rows}, indent=2) + "\n")
    for row in rows:
        if "skipped" in row:
            print(f"{row['workload']}: skipped ({row['skipped']})")
        else:
            print(f"{row['workload']}: simulate {row['simulate_training_s']:.1f} s, one process "
                  f"{row['one_process_s']:.1f} s, ratio {row['ratio']:.2f}x (target {row['target_ratio']}x)")


if __name__ == "__main__":
    main()
