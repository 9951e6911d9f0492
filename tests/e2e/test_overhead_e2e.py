"""The simulation's own overhead, in real runs: Ray's workers start with the client's modules
imported, the client workers' start-up is its own phase before training, and every round's
time is split in metrics.jsonl."""

import json
import os

import pytest
import ray

from fedmia.cli import main
from fedmia.simulation import WORKER_MODULES, descendant_processes, start_ray, stop_ray
from fedmia.timing import client_round_seconds, server_round_seconds

pytestmark = pytest.mark.e2e


def test_ray_workers_start_with_the_client_modules_imported():
    """The probe is defined here, so Ray ships it by value: unpickling it imports nothing."""

    class Probe:
        def imported(self, names):
            import sys
            return [name for name in names if name in sys.modules]

    before = descendant_processes()
    start_ray(0, verbose=False)
    try:
        probe = ray.remote(num_cpus=1)(Probe).remote()
        assert ray.get(probe.imported.remote(list(WORKER_MODULES)), timeout=120) == list(WORKER_MODULES)
    finally:
        stop_ray(before)


def test_a_run_records_its_start_up_and_splits_every_round(tmp_path):
    out = tmp_path / "run"
    assert main(["simulate", "--clients", "2", "--rounds", "1", "--attacks", "loss", "--out", str(out)]) == 0
    timing = json.loads((out / "results.json").read_text())["timing"]
    assert timing["client_startup_s"] > 0 and timing["training_s"] > 0
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    workers = {c["timing"]["worker"] for r in rounds for c in r["clients"]}
    assert os.getpid() not in workers and 1 <= len(workers) <= (os.cpu_count() or 1)
    assert all(len(r["clients"]) == 2 and r["seconds"]["dispatch"] > 0 for r in rounds[1:])
    means = client_round_seconds(rounds)
    assert all(means[part] > 0 for part in ("data", "rebuild", "compute", "pack", "handler", "transfer"))
    assert means["handler"] >= means["compute"]
    assert server_round_seconds(rounds)["evaluation"] > 0
