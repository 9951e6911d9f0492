"""The active malicious client: gradient ascent on its candidate records, checked against a
manual autograd step, wired into the round only for role "malicious:active", bounded so the
federation still learns."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from fedmia.adversary.active import MAX_LOSS_RISE, gradient_ascent
from fedmia.adversary.candidates import malicious_candidates
from fedmia.config import resolve_config
from fedmia.data import load_dataset
from fedmia.local import run_local_round
from fedmia.models import build_model
from fedmia.run import PreparedRun, prepare_run
from fedmia.training import TrainingPlan, predict_logits, train_epochs

ATTACKER = 4
CLIENTS = 5


def tiny_model() -> nn.Module:
    """Conv, BatchNorm (running statistics moved away from their defaults) and a linear head."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(),
                          nn.Linear(2 * 4 * 4, 3))
    with torch.no_grad():
        model.train()(torch.randn(16, 1, 4, 4) * 3 + 1)
    return model


def mean_loss(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    logits = torch.as_tensor(predict_logits(model, images))
    return float(nn.functional.cross_entropy(logits, torch.as_tensor(labels)))


def test_one_step_is_the_normalized_gradient_of_the_records_mean_loss():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(7, 1, 4, 4)).astype(np.float32)
    labels = rng.integers(0, 3, size=7)
    model, manual = tiny_model(), tiny_model()
    manual.eval()
    loss = nn.functional.cross_entropy(manual(torch.as_tensor(images)), torch.as_tensor(labels))
    gradients = torch.autograd.grad(loss, list(manual.parameters()))
    norm = torch.sqrt(sum((g**2).sum() for g in gradients))
    expected = [p.detach() + 0.3 * g / norm for p, g in zip(manual.parameters(), gradients)]

    stats = gradient_ascent(model, images, labels, steps=1, step_size=0.3, max_rise=math.inf, chunk_size=3)

    for parameter, wanted in zip(model.parameters(), expected):
        torch.testing.assert_close(parameter.detach(), wanted, rtol=1e-5, atol=1e-6)
    for buffer, kept in zip(model.buffers(), tiny_model().buffers()):
        assert torch.equal(buffer, kept)
    assert stats.steps == 1
    assert stats.loss_before == pytest.approx(float(loss.detach()), rel=1e-5)
    assert stats.loss_after == pytest.approx(mean_loss(model, images, labels), rel=1e-5)
    assert stats.loss_after > stats.loss_before


def test_ascent_on_a_trained_cnn_raises_the_records_loss_by_at_most_the_bound():
    digits = load_dataset("digits")
    model = build_model("cnn", (1, 8, 8), 10, seed=0)
    train_epochs(model, digits.images[:300], digits.labels[:300], TrainingPlan(), seed=0)
    records = slice(300, 500)
    before = mean_loss(model, digits.images[records], digits.labels[records])

    stats = gradient_ascent(model, digits.images[records], digits.labels[records], steps=50, max_rise=1.0)

    after = mean_loss(model, digits.images[records], digits.labels[records])
    assert stats.loss_before == pytest.approx(before, rel=1e-5)
    assert stats.loss_after == pytest.approx(after, rel=1e-5)
    assert before + 0.9 < after <= before + 1.0
    assert all(torch.isfinite(p).all() for p in model.state_dict().values())


def test_no_records_leave_the_model_unchanged():
    model = tiny_model()
    stats = gradient_ascent(model, np.zeros((0, 1, 4, 4), np.float32), np.zeros(0, np.int64))
    assert stats.steps == 0
    for mine, kept in zip(model.state_dict().values(), tiny_model().state_dict().values()):
        assert torch.equal(mine, kept)


def prepared(tmp_path, attack: str | None, rounds: int = 1, local_epochs: int = 1) -> PreparedRun:
    """A digits run of CLIENTS clients; client ATTACKER is malicious with `attack` (None: honest)."""
    groups = [] if attack is None else [{"ids": [ATTACKER], "role": "malicious", "attack": attack}]
    config = resolve_config({"clients": CLIENTS, "rounds": rounds, "local-epochs": local_epochs, "seed": 3,
                             "out": str(tmp_path / (attack or "honest")), "client": groups}, {})
    return prepare_run(config)


def same_state(one: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> bool:
    return one.keys() == other.keys() and all(torch.equal(one[k], other[k]) for k in one)


def test_honest_and_passive_rounds_are_bit_identical_and_active_only_adds_the_ascent(tmp_path):
    runs = {attack: prepared(tmp_path, attack) for attack in (None, "passive", "active")}
    start = runs[None].new_model().state_dict()
    results = {attack: [run_local_round(run, client, start, 1, None) for client in range(CLIENTS)]
               for attack, run in runs.items()}
    for attack in ("passive", "active"):
        for client in range(ATTACKER):
            assert same_state(results[attack][client].state, results[None][client].state)
    honest, passive, active = (results[a][ATTACKER] for a in (None, "passive", "active"))
    assert same_state(passive.state, honest.state)
    assert passive.report.train_loss == honest.report.train_loss
    assert "active_ascent" not in passive.report.details

    run = runs["active"]
    indices, _, _ = malicious_candidates(run.split, run.dataset.labels, run.config.seed, ATTACKER)
    by_hand = run.model_from_state(honest.state)
    stats = gradient_ascent(by_hand, run.images(indices), run.labels(indices))
    assert same_state(active.state, by_hand.state_dict())
    assert not same_state(active.state, honest.state)
    assert all(torch.isfinite(value).all() for value in active.state.values())
    assert active.report.train_loss == honest.report.train_loss
    assert active.report.details["active_ascent"] == stats.to_dict()
    assert 0 < stats.loss_after - stats.loss_before <= MAX_LOSS_RISE


def fedavg(run: PreparedRun, rounds: int) -> list[dict[str, torch.Tensor]]:
    """Every global model of `rounds` rounds of FedAvg (example-weighted mean of the uploads)."""
    states = [run.new_model().state_dict()]
    for server_round in range(1, rounds + 1):
        results = [run_local_round(run, client, states[-1], server_round, None) for client in range(CLIENTS)]
        weights = np.array([r.report.num_examples for r in results], dtype=np.float64)
        weights /= weights.sum()
        states.append({name: sum(r.state[name].double() * w for r, w in zip(results, weights)).to(value.dtype)
                       for name, value in states[-1].items()})
    return states


def test_the_ascent_reaches_the_global_model_and_the_federation_still_learns(tmp_path):
    """The attacker's ascent lifts the global model's loss on its candidates, the next round's
    honest clients bring it back down, and the global model stays accurate."""
    trained = {attack: fedavg(run, 3) for attack, run in
               ((a, prepared(tmp_path, a, rounds=3, local_epochs=2)) for a in ("passive", "active"))}
    run = prepared(tmp_path, None)
    indices, _, _ = malicious_candidates(run.split, run.dataset.labels, run.config.seed, ATTACKER)
    images, labels = run.images(indices), run.labels(indices)
    loss = {attack: [mean_loss(run.model_from_state(s), images, labels) for s in states]
            for attack, states in trained.items()}
    assert loss["active"][1] > loss["passive"][1] + 0.05
    assert loss["active"][1] - loss["active"][2] > loss["passive"][1] - loss["passive"][2]
    test_images, test_labels = run.images(run.split.test), run.labels(run.split.test)
    for states in trained.values():
        final = predict_logits(run.model_from_state(states[-1]), test_images).argmax(1)
        assert (final == test_labels).mean() > 0.85
