"""Wall time and peak memory of the default run (`simulate --clients 20`), with its time split.

Run: `python benchmarks/bench_simulation.py [--out FILE]`. Target: at most 180 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from fedmia.config import resolve_config
from fedmia.simulation import simulate

TARGET_SECONDS = 180.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/simulation.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        results = simulate(resolve_config(None, {"clients": 20, "out": f"{folder}/run"}))
        wall = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row = {"wall_s": wall, "target_s": TARGET_SECONDS, "within_target": wall <= TARGET_SECONDS,
           "driver_peak_rss_mib": peak_mib, "timing": results["timing"],
           "test_accuracy": results["run"]["final_test_accuracy"],
           "global_loss_auc": results["global"]["attacks"]["loss"]["auc"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(row, indent=2))
    print(json.dumps(row, indent=2))


if __name__ == "__main__":
    main()
