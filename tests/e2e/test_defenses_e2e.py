"""Composed and prepared defenses in a real federation (Flower + Ray): each client with its own
defense, the teacher prepared before round 1 as a Ray task and recorded, and a second run served
from the preparation cache with identical results."""

import json

import pytest

from fedmia.cli import main
from fedmia.timing import without_timings

pytestmark = pytest.mark.e2e

CONFIG = """
clients = 4
rounds = 2
public_size = 300
attacks = ["loss", "shadow-nn"]
[[client]]
ids = "0"
defense = "distill"
teacher_epochs = 10
[[client]]
ids = "1"
defense = "label-smoothing+dropout"
smoothing = 0.2
p = 0.3
[[client]]
ids = "2"
defense = "mixup+dpsgd"
alpha = 0.5
epsilon = 8.0
[[client]]
ids = "3"
defense = "relaxloss"
alpha = 0.5
"""


def simulate(tmp_path, name):
    (tmp_path / "config.toml").write_text(CONFIG)
    out = tmp_path / name
    assert main(["simulate", "--config", str(tmp_path / "config.toml"), "--cache-dir", str(tmp_path / "cache"),
                 "--out", str(out)]) == 0
    return out


def test_each_client_runs_its_own_defense_and_a_second_run_reuses_the_preparation(tmp_path):
    first = simulate(tmp_path, "first")
    results = json.loads((first / "results.json").read_text())
    assert [row["defense"] for row in results["clients"]] == [
        "distill", "label-smoothing+dropout", "mixup+dpsgd", "relaxloss"]
    assert all(row["trained"] for row in results["clients"])
    dp_client = results["clients"][2]
    assert dp_client["privacy"]["epsilon"] <= 8.0
    assert any("mixup" in reason for reason in dp_client["epsilon_not_covering"])
    assert "epsilon_not_covering" not in results["clients"][1]
    preparation = json.loads((first / "preparation.json").read_text())
    assert list(preparation) == ["0"]
    (teacher,) = preparation["0"]
    assert teacher["kind"] == "teacher" and not teacher["reused"]
    report = (first / "report.md").read_text()
    assert "## Defense preparation" in report and "NOT a guarantee for this client" in report
    assert "preparation_s" in results["timing"]

    second = simulate(tmp_path, "second")
    (again,) = json.loads((second / "preparation.json").read_text())["0"]
    assert again["reused"] and again["key"] == teacher["key"]
    repeated = json.loads((second / "results.json").read_text())
    for stored in (results, repeated):
        stored["run"].pop("out")
    assert without_timings(repeated) == without_timings(results)
