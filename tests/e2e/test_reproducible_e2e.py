"""Same config and seed, same numbers: two real runs compared number by number, also with the
noise of client-level DP (Flower's wrappers draw it from numpy's global generator) and of
DP-SGD."""

import json

import pytest

from fedmia.cli import main
from fedmia.timing import without_timings

pytestmark = pytest.mark.e2e


def run_once(out, flags: list[str]) -> dict:
    assert main(["simulate", "--rounds", "2", "--out", str(out), *flags]) == 0
    results = without_timings(json.loads((out / "results.json").read_text()))
    results["run"].pop("out")
    return results


def test_two_runs_with_one_seed_give_identical_results(tmp_path):
    """Also with client sampling: the seed picks clients, not Flower's random node ids."""
    flags = ["--clients", "4", "--fraction", "0.5", "--seed", "11", "--partition", "dirichlet:1.0"]
    first = run_once(tmp_path / "first", flags)
    assert first == run_once(tmp_path / "second", flags)
    lines = [json.loads(line) for line in (tmp_path / "first" / "metrics.jsonl").read_text().splitlines()]
    assert all(len(line["clients"]) == 2 for line in lines[1:])


def noise_is_on(results: dict) -> bool:
    """The run's formal guarantee is finite: its noise was really drawn."""
    if results["client_level_dp"] is not None:
        return results["client_level_dp"]["epsilon"] is not None
    return all(row["privacy"]["epsilon"] <= 4.0 for row in results["clients"])


@pytest.mark.parametrize("mode", [
    ["--client-dp", "server-fixed"],
    ["--defense", "dpsgd", "--epsilon", "4"],
], ids=["client-dp", "dpsgd"])
def test_private_runs_with_one_seed_give_identical_results(tmp_path, mode):
    flags = ["--clients", "3", "--local-epochs", "1", "--attacks", "loss", "--seed", "5", *mode]
    first = run_once(tmp_path / "first", flags)
    assert noise_is_on(first)
    assert first == run_once(tmp_path / "second", flags)
