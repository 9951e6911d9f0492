"""Real federations mixing DP-SGD clients at a small budget with undefended clients.

`federation`: four clients over three rounds, for the budget and the accountant across rounds.
`overfitted`: two clients of equal size, one round of 30 local epochs from the same initial
model, so they differ only in the defense: the undefended one memorizes its data and its
held-out epsilon bound is clearly positive, above the DP client's formal epsilon, which shows
that the measurement can catch a defense that leaks that much; the DP client's bound, measured
the same way on as many samples, must stay below its formal epsilon.
"""

import json

import pytest

from fedmia.cli import main
from fedmia.summary import check_run

pytestmark = pytest.mark.e2e


def simulate(out, *flags: str) -> tuple[dict, object]:
    assert main(["simulate", *flags, "--defense", "dpsgd", "--epsilon", "1,inf", "--out", str(out)]) == 0
    return json.loads((out / "results.json").read_text()), out


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    return simulate(tmp_path_factory.mktemp("runs") / "dp", "--clients", "4", "--rounds", "3",
                    "--local-epochs", "3", "--seed", "1")


@pytest.fixture(scope="module")
def overfitted(tmp_path_factory):
    return simulate(tmp_path_factory.mktemp("runs") / "overfit", "--clients", "2", "--rounds", "1",
                    "--local-epochs", "30", "--seed", "1")


def test_dp_clients_report_formal_epsilon_within_budget_and_every_round(federation):
    data, out = federation
    rows = data["clients"]
    assert [row["defense"] for row in rows] == ["dpsgd", "dpsgd", "none", "none"]
    for row in rows[:2]:
        assert 0.9 < row["privacy"]["epsilon"] <= 1.0
        assert row["privacy"]["accountant"] == "rdp" and row["privacy"]["steps"] > 0
    rounds = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    spent = [next(c for c in r["clients"] if c["client"] == 0)["privacy"]["epsilon"] for r in rounds[1:]]
    assert len(spent) == 3 and spent[0] < spent[1] < spent[2], "the accountant must persist across rounds"


def test_dp_clients_bound_stays_below_formal_epsilon_in_the_federation(federation):
    data, out = federation
    for row in data["clients"][:2]:
        assert row["eps_lower_bound"] <= row["privacy"]["epsilon"]
        assert abs(row["attacks"][row["strongest_attack"]]["auc"] - 0.5) < 0.1
    assert check_run(out) == []


def test_an_overfitted_undefended_client_gives_a_clearly_positive_held_out_bound(overfitted):
    data, out = overfitted
    dp, plain = data["clients"]
    assert (dp["defense"], plain["defense"]) == ("dpsgd", "none")
    assert plain["train_accuracy"] > 0.99 and plain["generalization_gap"] > 0.01
    bound = plain["eps_bound"]
    assert bound["n_members"] > 150 and bound["n_members"] == bound["n_nonmembers"]
    assert plain["eps_lower_bound"] > dp["privacy"]["epsilon"], (
        "at this sample size the held-out bound must be able to exceed the DP client's budget")
    assert check_run(out) == []


def test_dp_keeps_the_held_out_bound_of_the_same_client_size_below_its_small_epsilon(overfitted):
    dp, plain = overfitted[0]["clients"]
    assert 0.9 < dp["privacy"]["epsilon"] <= 1.0
    assert dp["n_train"] == pytest.approx(plain["n_train"], abs=2)
    assert abs(dp["eps_bound"]["n_members"] - plain["eps_bound"]["n_members"]) <= 5
    assert dp["eps_lower_bound"] <= dp["privacy"]["epsilon"] < plain["eps_lower_bound"]
