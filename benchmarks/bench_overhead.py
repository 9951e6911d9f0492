"""The simulation's own overhead: `simulate`'s training phase against the same work in one process.

Both sides run the same clients, rounds, local training (`fedmia.local.run_local_round`), FedAvg
and test evaluation (of the initial model, as `simulate` does, and after every round), from the
same prepared run. The one-process side has no Flower, Ray, messages or run-directory writes:
the ratio is what the federation machinery costs.
Workloads: the default (digits, 20 clients, 5 rounds) and Fashion-MNIST (10 clients, 2 rounds,
1 local epoch; needs the `dataset-fashion-mnist` package, skipped without it). Only the `loss`
attack runs after training: the attack phase is not measured here.

Each row also splits the time, as measured in the runs: per client round (mean seconds)
"data" (the client's records and the run's data), "rebuild" (defense and model from their
states, the upload's tensors), "compute" (local training), "pack" (the upload into a Flower
record), "transfer" (the client workers' time outside the ClientApp while the server waits for
replies: messages, queueing, Ray and Flower hand-offs); per server round "evaluation" and the
rest of `fedmia.timing.server_round_seconds`; and `client_startup_s`, the time until every
client worker answered (Ray's workers importing torch, Flower and fedmia), which precedes the
training phase. Run: `python benchmarks/bench_overhead.py [--out FILE]`.
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
from fedmia.rundir import RunDirectory
from fedmia.simulation import simulate
from fedmia.timing import RunTimer, client_round_seconds, server_round_seconds

WORKLOADS = {
    "default (digits, 20 clients, 5 rounds)": {"clients": 20},
    "fashion-mnist (10 clients, 2 rounds, 1 local epoch)": {
        "dataset": "fashion-mnist", "clients": 10, "rounds": 2, "local_epochs": 1},
}
TARGETS = {"default (digits, 20 clients, 5 rounds)": 2.0,
           "fashion-mnist (10 clients, 2 rounds, 1 local epoch)": 1.25}
CLIENT_PARTS = ("data", "rebuild", "compute")


def fedavg(uploads: list[tuple[int, dict[str, torch.Tensor]]]) -> dict[str, torch.Tensor]:
    """Example-weighted mean of the uploads, as Flower's FedAvg computes it."""
    total = sum(weight for weight, _ in uploads)
    return {name: sum(state[name] * (weight / total) for weight, state in uploads)
            for name in uploads[0][1]}


def one_process_training(run: PreparedRun) -> tuple[float, dict[str, Any]]:
    """Seconds for every round of the federation's work, in this process, and their split:
    mean seconds per client round and per evaluation."""
    config = run.config
    per_round = max(1, int(config.clients * config.fraction))
    test_images, test_labels = run.images(run.split.test), run.labels(run.split.test)
    global_state = run.new_model().state_dict()
    defense_states: dict[int, Any] = {}
    parts: dict[str, list[float]] = {part: [] for part in CLIENT_PARTS}
    evaluation = RunTimer()
    started = time.perf_counter()
    with evaluation.phase("evaluation"):
        evaluate_on(run.model_from_state(global_state), test_images, test_labels, config.device)
    for server_round in range(1, config.rounds + 1):
        uploads = []
        for client in sample_clients(config.clients, per_round, config.seed, server_round):
            result = run_local_round(run, client, global_state, server_round, defense_states.get(client))
            defense_states[client] = result.defense_state
            uploads.append((result.report.num_examples, result.state))
            for part in CLIENT_PARTS:
                parts[part].append(result.seconds.get(part, 0.0))
        global_state = fedavg(uploads)
        with evaluation.phase("evaluation"):
            evaluate_on(run.model_from_state(global_state), test_images, test_labels, config.device)
    seconds = time.perf_counter() - started
    return seconds, {"client_round": {part: sum(v) / len(v) for part, v in parts.items()},
                     "server_round": {"evaluation": evaluation.seconds()["evaluation"] / (config.rounds + 1)}}


def measure(name: str, settings: dict[str, Any], folder: Path) -> dict[str, Any]:
    settings = {**settings, "attacks": ("loss",)}
    config = resolve_config(None, {**settings, "out": str(folder / "simulated")})
    results = simulate(config)
    rounds = RunDirectory(config.out).read_metrics()
    baseline = resolve_config(None, {**settings, "out": str(folder / "baseline")})
    single, single_split = one_process_training(prepare_run(baseline))
    timing = results["timing"]
    simulated = timing["training_s"]
    startup = timing["ray_startup_s"] + timing.get("client_startup_s", 0.0)
    return {"workload": name, "simulate_training_s": simulated, "one_process_s": single,
            "ratio": simulated / single, "target_ratio": TARGETS[name],
            "startup_s": startup, "ratio_with_startup": (startup + simulated) / single,
            "timing": timing,
            "split": {"simulate": {"client_round": client_round_seconds(rounds),
                                   "server_round": server_round_seconds(rounds),
                                   "first_round": rounds[1]["seconds"] if len(rounds) > 1 else None},
                      "one_process": single_split}}


def split_lines(row: dict[str, Any]) -> list[str]:
    """The time split of one row as text: simulate's numbers, the one-process ones beside."""
    simulated, single = row["split"]["simulate"], row["split"]["one_process"]
    client = ", ".join(f"{part} {1000 * value:.1f}" + (f" ({1000 * single['client_round'][part]:.1f})"
                                                        if part in single["client_round"] else "")
                       for part, value in simulated["client_round"].items() if value is not None)
    server = ", ".join(f"{part} {1000 * value:.0f}" for part, value in simulated["server_round"].items()
                       if value is not None)
    return [f"  per client round, ms (one process in brackets): {client}",
            f"  per server round, ms: {server}; one-process evaluation "
            f"{1000 * single['server_round']['evaluation']:.0f}",
            f"  start-up: Ray {row['timing']['ray_startup_s']:.1f} s, client workers "
            f"{row['timing'].get('client_startup_s', 0.0):.1f} s; with start-up "
            f"{row['ratio_with_startup']:.2f}x the one-process time"]


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
            print("\n".join(split_lines(row)))


if __name__ == "__main__":
    main()
