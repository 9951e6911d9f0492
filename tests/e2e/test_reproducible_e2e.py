"""Same config and seed, same numbers: two real runs compared number by number."""

import json

import pytest

from fedmia.cli import main

pytestmark = pytest.mark.e2e


def run_once(out) -> dict:
    assert main(["simulate", "--clients", "3", "--rounds", "1", "--seed", "11", "--partition",
                 "dirichlet:1.0", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    results.pop("timing")
    results["run"].pop("out")
    return results


def test_two_runs_with_one_seed_give_identical_results(tmp_path):
    assert run_once(tmp_path / "first") == run_once(tmp_path / "second")
