"""The attack phase of a large federation, serial against parallel (issue 12's workload).

One `simulate` run of Fashion-MNIST with 1,000 clients, 5% of them a round, 2 rounds (its own
attack phase only the cheap loss attack), then the attack phase again on its directory with
the default attacks (the server attacking the `global` scope and every client that uploaded),
twice: with one attack worker and with one per CPU.
Records both phases' wall time, the speed-up (target: at least 1.8x on 2 cores), the training
time and peak memory of the driver, and checks the two attack phases give the same results.
Needs the `dataset-fashion-mnist` package. Run: `python benchmarks/bench_attack_phase.py [--out FILE]`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from fedmia.config import DEFAULT_ATTACKS, resolve_config
from fedmia.evaluation import reattack
from fedmia.simulation import simulate
from fedmia.timing import without_timings

TARGET_SPEEDUP = 1.8
WORKLOAD = {"dataset": "fashion-mnist", "clients": 1000, "fraction": 0.05, "rounds": 2}
ATTACKS = {"attacks": DEFAULT_ATTACKS}


def timed_attack(run_dir: Path, workers: int) -> tuple[float, dict]:
    """The attack phase from scratch: the reference models an earlier phase left are removed."""
    shutil.rmtree(run_dir / "references", ignore_errors=True)
    started = time.perf_counter()
    results = reattack(run_dir, ATTACKS, workers=workers)
    return time.perf_counter() - started, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/attack_phase.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        run_dir = Path(folder) / "run"
        started = time.perf_counter()
        trained = simulate(resolve_config(None, {**WORKLOAD, "attacks": ("loss",), "out": str(run_dir)}))
        simulate_s = time.perf_counter() - started
        serial_s, serial = timed_attack(run_dir, 1)
        parallel_s, parallel = timed_attack(run_dir, 0)
    row = {"workload": WORKLOAD, "attacks": list(DEFAULT_ATTACKS), "cpus": os.cpu_count(), "simulate_wall_s": simulate_s,
           "simulate_timing": trained["timing"], "scopes": 1 + len([c for c in serial["clients"] if c["trained"]]),
           "attack_serial_s": serial_s, "attack_parallel_s": parallel_s, "speedup": serial_s / parallel_s,
           "target_speedup": TARGET_SPEEDUP,
           "identical_results": without_timings(serial) == without_timings(parallel),
           "driver_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "load_average_after": os.getloadavg()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(row, indent=2))
    print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
