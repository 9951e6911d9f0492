"""The committed ladp-vs-dpsgd results are what the committed script computes."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "experiments" / "ladp_vs_dpsgd.py"


@pytest.fixture(scope="module")
def experiment():
    spec = importlib.util.spec_from_file_location("ladp_vs_dpsgd", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("defense, epsilon, seed", [("dpsgd", 8.0, 0), ("ladp", 1.0, 3)])
def test_a_committed_row_is_recomputed_exactly(experiment, defense, epsilon, seed):
    committed = json.loads((experiment.RESULTS / "ladp_vs_dpsgd.json").read_text())
    row = next(r for r in committed if (r["defense"], r["epsilon_target"], r["seed"]) == (defense, epsilon, seed))
    fresh = {k: experiment.rounded(v) for k, v in experiment.train_and_measure(defense, epsilon, seed).items()}
    assert fresh == row


def test_the_committed_table_is_the_markdown_of_the_committed_rows(experiment):
    rows = json.loads((experiment.RESULTS / "ladp_vs_dpsgd.json").read_text())
    assert (experiment.RESULTS / "ladp_vs_dpsgd.md").read_text() == experiment.markdown(rows)
