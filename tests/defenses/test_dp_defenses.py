"""What dpsgd and ladp share: a budget over the whole run, kept across rebuilt clients, a stop
before overspending, and parameters checked up front."""

import json
import math

import pytest
import torch

from fedmia.data import load_dataset
from fedmia.defenses import DPSGD, ClientData, DefenseSpec, LayeredAdaptiveDP, RoundContext
from fedmia.errors import FedmiaError
from fedmia.models import build_model
from fedmia.training import TrainingPlan

PLAN = TrainingPlan(local_epochs=1, batch_size=16)


@pytest.fixture(scope="module")
def client():
    digits = load_dataset("digits")
    return ClientData(0, digits.images[:40], digits.labels[:40], 10)


def run_rounds(defense_class, client, rounds, planned, **params):
    """Train `rounds` rounds, rebuilding the defense from JSON state each round as Flower does."""
    model = build_model("cnn", (1, 8, 8), 10, dp_compatible=True, seed=0)
    state, reports, untouched = None, [], []
    for server_round in range(1, rounds + 1):
        defense = defense_class(**params)
        if state is not None:
            defense.load_state_dict(state)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        reports.append(defense.train_round(model, client, RoundContext(server_round, planned, PLAN, server_round)))
        untouched.append(all(torch.equal(before[k], v) for k, v in model.state_dict().items()))
        state = json.loads(json.dumps(defense.state_dict()))
    return reports, untouched


@pytest.mark.parametrize("defense_class", [DPSGD, LayeredAdaptiveDP])
def test_budget_covers_the_planned_rounds_grows_every_round_then_stops(defense_class, client):
    target, planned = 2.0, 3
    reports, untouched = run_rounds(defense_class, client, planned + 1, planned, epsilon=target)
    trained, last = reports[:planned], reports[planned]
    epsilons = [r.privacy.epsilon for r in trained]
    assert not any(r.stopped for r in trained) and not any(untouched[:planned])
    assert all(a < b for a, b in zip(epsilons, epsilons[1:]))
    assert epsilons[-1] <= target and epsilons[-1] == pytest.approx(target, rel=0.01)
    assert last.stopped and "budget" in last.message and untouched[planned]
    assert last.privacy.epsilon == epsilons[-1] and last.privacy.steps == planned * 3
    assert last.privacy.sample_rate == pytest.approx(16 / 40) and last.privacy.delta == pytest.approx(1 / 400)


def test_dpsgd_and_ladp_account_the_same_budget_identically(client):
    """ladp's sigma_eff is calibrated exactly like dpsgd's sigma: same steps, same epsilon."""
    flat, _ = run_rounds(DPSGD, client, 2, 2, epsilon=4.0)
    layered, _ = run_rounds(LayeredAdaptiveDP, client, 2, 2, epsilon=4.0)
    assert [r.privacy for r in flat] == [r.privacy for r in layered]


def test_prv_accountant_and_an_explicit_delta_are_used_and_reported(client):
    (report,), _ = run_rounds(DPSGD, client, 1, 1, epsilon=4.0, delta=1e-4, accountant="prv")
    assert report.privacy.accountant == "prv" and report.privacy.delta == 1e-4
    assert report.privacy.epsilon == pytest.approx(4.0, rel=0.01)


def test_nothing_computed_from_records_without_noise_is_reported(client):
    (report,), _ = run_rounds(DPSGD, client, 1, 1, epsilon=4.0)
    assert math.isnan(report.train_loss) and math.isnan(report.train_accuracy)


@pytest.mark.parametrize("name, params", [
    ("dpsgd", {"epsilon": -1}), ("dpsgd", {"epsilon": 1, "delta": 0.5}),
    ("dpsgd", {"epsilon": 1, "accountant": "moments"}), ("dpsgd", {"epsilon": 1, "max_grad_norm": 0}),
    ("dpsgd", {"epsilon": 1, "clip": 1.0}), ("ladp", {"epsilon": 1, "max_grad_norm": 1.0}),
    ("ladp", {"epsilon": 1, "other_clip": 0}), ("ladp", {"epsilon": 1, "reallocate_every": 2.5}),
])
def test_bad_parameters_are_user_errors_up_front(name, params):
    with pytest.raises(FedmiaError, match=name):
        DefenseSpec(name, params).build()


def test_both_defenses_are_registered_and_need_the_dp_compatible_model():
    assert all(DefenseSpec(name, {"epsilon": 1.0}).needs_dp_compatible_model for name in ("dpsgd", "ladp"))
