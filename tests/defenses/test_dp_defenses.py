"""DP-SGD and layered DP as clients use them: budget over the run, stop, state, allocation."""

import numpy as np
import pytest
import torch

from fedmia.data import load_dataset
from fedmia.defenses import DPSGD, ClientData, LayeredAdaptiveDP, RoundContext
from fedmia.defenses.ladp import fisher_scores, layer_groups
from fedmia.errors import FedmiaError
from fedmia.models import build_model
from fedmia.privacy import effective_noise_multiplier
from fedmia.training import TrainingPlan

PLAN = TrainingPlan(local_epochs=1, batch_size=16)


@pytest.fixture(scope="module")
def client():
    digits = load_dataset("digits")
    return ClientData(0, digits.images[:48], digits.labels[:48], 10)


def model():
    return build_model("cnn", (1, 8, 8), 10, dp_compatible=True, seed=0)


@pytest.mark.parametrize("defense_class", [DPSGD, LayeredAdaptiveDP])
def test_client_spends_its_budget_over_the_planned_rounds_then_stops(defense_class, client):
    target, rounds = 2.0, 3
    state, epsilons = None, []
    net = model()
    for server_round in range(1, rounds + 2):
        defense = defense_class(epsilon=target)
        if state is not None:
            defense.load_state_dict(state)
        before = {k: v.clone() for k, v in net.state_dict().items()}
        report = defense.train_round(net, client, RoundContext(server_round, rounds, PLAN, server_round))
        state = defense.state_dict()
        if server_round <= rounds:
            assert not report.stopped
            epsilons.append(report.privacy.epsilon)
        else:
            assert report.stopped and "exceeded" in report.message
            assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(a < b for a, b in zip(epsilons, epsilons[1:]))
    assert epsilons[-1] <= target and epsilons[-1] == pytest.approx(target, rel=0.01)
    assert report.privacy.steps == rounds * 3 and report.privacy.delta == pytest.approx(1 / 480)


def test_dpsgd_changes_the_model_and_keeps_its_parameter_names(client):
    net = model()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    DPSGD(epsilon=8.0).train_round(net, client, RoundContext(1, 1, PLAN, 0))
    assert net.state_dict().keys() == before.keys()
    assert any(not torch.equal(before[k], v) for k, v in net.state_dict().items())


@pytest.mark.parametrize("params", [{"epsilon": -1}, {"epsilon": 1, "delta": 0.5},
                                    {"epsilon": 1, "accountant": "moments"},
                                    {"epsilon": 1, "max_grad_norm": 0}])
def test_bad_parameters_are_rejected_up_front(params):
    with pytest.raises(FedmiaError):
        DPSGD(**params)


def test_ladp_allocation_meets_sigma_eff_and_reports_every_layer(client):
    net = model()
    defense = LayeredAdaptiveDP(epsilon=4.0)
    report = defense.train_round(net, client, RoundContext(1, 2, PLAN, 0))
    layers = report.details["layers"]
    assert set(layers) == set(layer_groups(net))
    sigma_eff = effective_noise_multiplier([layer["sigma"] for layer in layers.values()])
    assert sigma_eff == pytest.approx(report.privacy.noise_multiplier)
    sensitive = [l for l in layers.values() if l["sensitive"]]
    others = [l for l in layers.values() if not l["sensitive"]]
    assert sensitive and others
    assert all(l["clip"] == 1.0 for l in sensitive) and all(l["clip"] == 5.0 for l in others)
    assert others[0]["sigma"] == pytest.approx(sensitive[0]["sigma"] / 2)


def test_ladp_allocation_uses_no_private_data(client):
    """The Fisher scores depend on the model and the seed only: never on the client's records."""
    net = model()
    scores = fisher_scores(net, (1, 8, 8), seed=3)
    assert scores == fisher_scores(net, (1, 8, 8), seed=3)
    assert all(np.isfinite(v) and v >= 0 for v in scores.values())
