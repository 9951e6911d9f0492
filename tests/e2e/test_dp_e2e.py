"""A real federation mixing DP-SGD clients at a small budget with undefended clients."""

import json

import pytest

from fedmia.cli import main

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "dp"
    code = main(["simulate", "--clients", "4", "--rounds", "3", "--local-epochs", "3", "--seed", "1",
                 "--defense", "dpsgd", "--epsilon", "1,inf", "--out", str(out)])
    assert code == 0
    return json.loads((out / "results.json").read_text()), out


def test_dp_clients_report_formal_epsilon_within_budget_and_every_round(results):
    data, out = results
    rows = data["clients"]
    assert [row["defense"] for row in rows] == ["dpsgd", "dpsgd", "none", "none"]
    for row in rows[:2]:
        assert 0.9 < row["privacy"]["epsilon"] <= 1.0
        assert row["privacy"]["accountant"] == "rdp" and row["privacy"]["steps"] > 0
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    spent = [next(c for c in r["clients"] if c["client"] == 0)["privacy"]["epsilon"] for r in rounds[1:]]
    assert len(spent) == 3 and spent[0] < spent[1] < spent[2], "the accountant must persist across rounds"


def test_measured_leakage_respects_the_formal_bound_and_undefended_leak_more(results):
    rows = results[0]["clients"]
    dp, plain = rows[:2], rows[2:]
    for row in dp:
        assert row["eps_lower_bound"] <= row["privacy"]["epsilon"]
        assert abs(row["attacks"][row["strongest_attack"]]["auc"] - 0.5) < 0.1
    def mean_auc(group):
        return sum(r["attacks"]["loss"]["auc"] for r in group) / len(group)
    assert mean_auc(plain) > mean_auc(dp) + 0.05
