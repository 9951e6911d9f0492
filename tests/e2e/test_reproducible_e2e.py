"""Same config and seed, same numbers: two real runs compared number by number."""

import json

import pytest

from fedmia.cli import main

pytestmark = pytest.mark.e2e


def run_once(out) -> dict:
    assert main(["simulate", "--clients", "4", "--rounds", "2", "--fraction", "0.5", "--seed", "11",
                 "--partition", "dirichlet:1.0", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    results.pop("timing")
    results["run"].pop("out")
    return results


def test_two_runs_with_one_seed_give_identical_results(tmp_path):
    """Also with client sampling: the seed picks clients, not Flower's random node ids."""
    first = run_once(tmp_path / "first")
    assert first == run_once(tmp_path / "second")
    lines = [json.loads(line) for line in (tmp_path / "first" / "metrics.jsonl").read_text().splitlines()]
    assert all(len(line["clients"]) == 2 for line in lines[1:])
