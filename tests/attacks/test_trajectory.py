"""Trajectory attacks: hand-computed loss drops, FedMIA's Gaussian test and update cosines on
small models; a planted federated round on digits that they detect; rounds that carry no
membership signal; the threshold calibrated on the population; access and input errors."""

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from fedmia.attacks.base import OUTPUTS, WHITE_BOX, AdversaryKnowledge, RoundView, Samples, TargetView
from fedmia.attacks.trajectory import (
    FedMiaAttack,
    LossTrajectoryAttack,
    UpdateAlignmentAttack,
    update_alignment,
)
from fedmia.errors import FedmiaError
from fedmia.metrics import membership_metrics
from fedmia.models import build_model
from fedmia.training import TrainingPlan, train_epochs

ATTACKS = (LossTrajectoryAttack, FedMiaAttack, UpdateAlignmentAttack)
ln = math.log


def constant_model(probs: list[float]) -> nn.Module:
    """Softmax outputs `probs` for every input of shape (1, 1, 2): zero weights, log-prob biases."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(2, len(probs)))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.copy_(torch.log(torch.tensor(probs)))
    return model


def tiny_samples(labels: list[int]) -> Samples:
    images = np.arange(2 * len(labels), dtype=np.float32).reshape(len(labels), 1, 1, 2)
    return Samples(images, np.array(labels), np.arange(len(labels)))


def scores_of(attack, rounds: tuple[RoundView, ...], samples: Samples, population: Samples,
              num_classes: int = 10) -> np.ndarray:
    attack.fit(AdversaryKnowledge(num_classes, population=population))
    return attack.score(TargetView(rounds[-1].model, rounds=rounds), samples)


# Round 1 moves p from (0.5, 0.5) to (0.8, 0.2); round 2 from there to (0.6, 0.4).
# Loss drops ln p_model - ln p_start: label 0: ln 1.6, ln 0.75; label 1: ln 0.4, ln 2.
@pytest.mark.parametrize("aggregate, expected", [
    ("sum", [ln(1.6) + ln(0.75), ln(0.4) + ln(2)]),
    ("last", [ln(0.75), ln(2)]),
    ("max", [ln(1.6), ln(2)]),
])
def test_loss_drops_by_hand(aggregate, expected):
    first, second, third = (constant_model(p) for p in ([0.5, 0.5], [0.8, 0.2], [0.6, 0.4]))
    rounds = (RoundView(1, first, second), RoundView(2, second, third))
    samples = tiny_samples([0, 1])
    scores = scores_of(LossTrajectoryAttack(aggregate=aggregate), rounds, samples, samples, 2)
    np.testing.assert_allclose(scores, expected, rtol=1e-5)


def test_loss_trajectory_rejects_an_unknown_aggregate():
    with pytest.raises(FedmiaError, match="aggregate='mean' is not one of sum, last, max"):
        LossTrajectoryAttack(aggregate="mean")


TARGET_PROBS = [0.7, 0.2, 0.1]
OTHER_PROBS = ([0.5, 0.3, 0.2], [0.4, 0.4, 0.2], [0.6, 0.1, 0.3])


def gaussian_by_hand(fixed_variance: bool) -> list[float]:
    """log Phi((phi_target - mean) / std) per label, with math only; phi = ln(p / (1 - p))."""
    def phi(p: float) -> float:
        return ln(p / (1 - p))

    means, variances = [], []
    for c in range(3):
        values = [phi(probs[c]) for probs in OTHER_PROBS]
        means.append(sum(values) / 3)
        variances.append(sum((v - means[c]) ** 2 for v in values) / 2)
    if fixed_variance:
        variances = [sum(variances) / 3] * 3
    zs = [(phi(TARGET_PROBS[c]) - means[c]) / math.sqrt(variances[c]) for c in range(3)]
    return [ln(0.5 * math.erfc(-z / math.sqrt(2))) for z in zs]


@pytest.mark.parametrize("fixed_variance", [False, True])
def test_fedmia_gaussian_by_hand(fixed_variance):
    """Two usable rounds sum; a round with a single other upload is skipped. The population is
    the candidates themselves, so the pooled variance is the mean over labels 0, 1, 2."""
    start, target = constant_model([1 / 3] * 3), constant_model(TARGET_PROBS)
    others = tuple(constant_model(p) for p in OTHER_PROBS)
    rounds = (RoundView(1, start, target, others), RoundView(2, start, target, others[:1]),
              RoundView(3, start, target, others))
    samples = tiny_samples([0, 1, 2])
    scores = scores_of(FedMiaAttack(fixed_variance=fixed_variance), rounds, samples, samples, 3)
    np.testing.assert_allclose(scores, 2 * np.array(gaussian_by_hand(fixed_variance)), rtol=1e-5)


@pytest.mark.parametrize("others", [0, 1])
def test_fedmia_needs_two_other_uploads_in_some_round(others):
    start, target = constant_model([0.5, 0.5]), constant_model([0.8, 0.2])
    rounds = (RoundView(1, start, target, (constant_model([0.6, 0.4]),) * others),)
    samples = tiny_samples([0, 1])
    with pytest.raises(FedmiaError, match="needs at least 2 other clients' uploads.*--keep-uploads all"):
        scores_of(FedMiaAttack(), rounds, samples, samples, 2)


PLAN = TrainingPlan(batch_size=8, lr=0.05)
PRETRAIN, POPULATION = np.arange(0, 300), np.arange(300, 600)
CLIENT, OTHER_CLIENTS = np.arange(600, 640), np.arange(640, 800).reshape(4, 40)
NONMEMBERS = np.arange(800, 1000)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread, as the attack phase runs each scope: on a shared two-core machine
    two threads contend and train these small models many times slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def samples_at(digits, indices: np.ndarray) -> Samples:
    return Samples(digits.images[indices], digits.labels[indices], indices)


def fine_tuned(digits, start: nn.Module, indices: np.ndarray, seed: int) -> nn.Module:
    """A client's upload: a copy of the round's start model after 5 local epochs on its records."""
    model = copy.deepcopy(start)
    train_epochs(model, digits.images[indices], digits.labels[indices], PLAN, seed, epochs=5)
    return model


def averaged(models: list[nn.Module]) -> nn.Module:
    """FedAvg over equally sized clients: the mean of every float tensor, BatchNorm statistics
    included (the batch counter is an integer and stays the first client's)."""
    states = [model.state_dict() for model in models]
    mean = {key: torch.stack([state[key] for state in states]).mean(0) if value.is_floating_point() else value
            for key, value in states[0].items()}
    model = copy.deepcopy(models[0])
    model.load_state_dict(mean)
    return model


@pytest.fixture(scope="module")
def rounds(digits) -> tuple[RoundView, ...]:
    """Two planted rounds as the server sees client k: a global model trained for an epoch on
    indices 0-299 (the default plan); each round client k fine-tunes it on its 40 records and
    four other clients on 40 records each, all disjoint; the next global model is their average."""
    start = build_model("cnn", (1, 8, 8), 10, seed=0)
    train_epochs(start, digits.images[PRETRAIN], digits.labels[PRETRAIN], TrainingPlan(), seed=0, epochs=1)
    views = []
    for server_round in (1, 2):
        uploads = [fine_tuned(digits, start, indices, 10 * server_round + client)
                   for client, indices in enumerate([CLIENT, *OTHER_CLIENTS])]
        views.append(RoundView(server_round, start, uploads[0], tuple(uploads[1:])))
        start = averaged(uploads)
    return tuple(views)


@pytest.fixture(scope="module")
def knowledge(digits) -> AdversaryKnowledge:
    """The adversary's population (300-599) took no part in any training."""
    return AdversaryKnowledge(10, population=samples_at(digits, POPULATION), seed=0)


def attack_on(attack, rounds: tuple[RoundView, ...], knowledge: AdversaryKnowledge, digits,
              members: np.ndarray, nonmembers: np.ndarray) -> float:
    """The attack's AUC against the last round's upload."""
    target = TargetView(rounds[-1].model, rounds=rounds)
    scores = attack.fit(knowledge).score(target, samples_at(digits, np.concatenate([members, nonmembers])))
    labels = np.r_[np.ones(len(members)), np.zeros(len(nonmembers))].astype(int)
    return membership_metrics(scores, labels, 1e-3).auc


@pytest.mark.parametrize("attack_class", ATTACKS)
def test_planted_rounds_leak_the_clients_records(attack_class, rounds, knowledge, digits):
    auc = attack_on(attack_class(), rounds, knowledge, digits, CLIENT, NONMEMBERS)
    assert auc > 0.7


@pytest.mark.parametrize("attack_class", [LossTrajectoryAttack, UpdateAlignmentAttack])
def test_an_untouched_upload_reveals_nothing(attack_class, rounds, knowledge, digits):
    """model == start: no loss moves, no update to align with; every score ties."""
    first = rounds[0]
    untouched = (RoundView(1, first.start, copy.deepcopy(first.start), first.others),)
    auc = attack_on(attack_class(), untouched, knowledge, digits, CLIENT, NONMEMBERS)
    assert auc == 0.5


@pytest.mark.parametrize("attack_class", ATTACKS)
def test_a_client_that_trained_on_other_records_reveals_nothing(attack_class, rounds, knowledge, digits):
    """Neither half of the candidates (a seeded random split of 400 records) is a member."""
    first = rounds[0]
    upload = fine_tuned(digits, first.start, np.arange(1300, 1340), 7)
    unrelated = (RoundView(1, first.start, upload, first.others),)
    halves = np.random.default_rng(0).permutation(np.arange(900, 1300)).reshape(2, 200)
    auc = attack_on(attack_class(), unrelated, knowledge, digits, *halves)
    assert abs(auc - 0.5) < 0.1


def test_update_alignment_matches_autograd(rounds, knowledge, digits):
    """Two samples, BatchNorm in eval mode, one per-sample-gradient batch each."""
    start, upload = rounds[0].start, rounds[0].model
    samples = samples_at(digits, CLIENT[:2])
    update = torch.cat([(end - begin).detach().flatten()
                        for end, begin in zip(upload.parameters(), start.parameters())])
    start.eval()
    expected = []
    for image, label in zip(samples.images, samples.labels):
        loss = nn.functional.cross_entropy(start(torch.as_tensor(image[None])), torch.as_tensor(label[None]))
        gradient = torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(start.parameters()))])
        expected.append(float(nn.functional.cosine_similarity(-gradient, update, dim=0)))
    one_at_a_time = update_alignment(start, upload, samples, "cpu", batch_size=1)
    np.testing.assert_allclose(one_at_a_time, expected, atol=1e-5)
    attack = UpdateAlignmentAttack().fit(knowledge)
    through_the_attack = attack.score(TargetView(upload, rounds=rounds[:1]), samples)
    np.testing.assert_allclose(through_the_attack, expected, atol=1e-5)


@pytest.mark.parametrize("attack_class", ATTACKS)
def test_the_threshold_flags_a_tenth_of_the_population(attack_class, rounds, knowledge):
    attack = attack_class().fit(knowledge)
    with pytest.raises(RuntimeError, match="score a target"):
        attack.decide(np.zeros(3))
    flagged = attack.decide(attack.score(TargetView(rounds[-1].model, rounds=rounds), knowledge.population))
    assert flagged.mean() == pytest.approx(0.1, abs=0.01)


@pytest.mark.parametrize("attack_class", ATTACKS)
def test_trajectory_attacks_need_trajectory_access(attack_class, rounds, knowledge, digits):
    target = TargetView(rounds[-1].model, frozenset({OUTPUTS, WHITE_BOX}), rounds=rounds)
    with pytest.raises(PermissionError, match="trajectory"):
        attack_class().fit(knowledge).score(target, samples_at(digits, CLIENT))


@pytest.mark.parametrize("attack_class", ATTACKS)
def test_trajectory_attacks_need_a_population(attack_class):
    with pytest.raises(FedmiaError, match="population"):
        attack_class().fit(AdversaryKnowledge(10))


@pytest.mark.parametrize("attack_class", ATTACKS)
def test_trajectory_attacks_need_rounds(attack_class, knowledge, digits):
    target = TargetView(build_model("cnn", (1, 8, 8), 10), rounds=())
    with pytest.raises(FedmiaError, match="none were kept.*--keep-uploads all"):
        attack_class().fit(knowledge).score(target, samples_at(digits, CLIENT))
