"""The baseline defenses, each checked at its mechanism: the batches mixup actually trains on,
the smoothed targets, the activations dropout actually zeroes, the decay the optimizer applies,
the epochs early stopping lets run, RelaxLoss's ascent below alpha; and how defenses compose."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from fedmia.data import load_dataset
from fedmia.defenses import ClientData, DefenseSpec, RoundContext
from fedmia.defenses.mixup import mix_pairs
from fedmia.defenses.relaxloss import RelaxedLoss, flattened_targets
from fedmia.errors import FedmiaError
from fedmia.models import build_model
from fedmia.training import TrainingPlan, predict_logits

SHAPE = (1, 8, 8)


@pytest.fixture(scope="module")
def client():
    digits = load_dataset("digits")
    return ClientData(0, digits.images[:120], digits.labels[:120], 10)


def context(epochs=2, seed=3, server_round=1):
    return RoundContext(server_round, 5, TrainingPlan(local_epochs=epochs, batch_size=16), seed)


def fresh_model(dp=False):
    return build_model("cnn", SHAPE, 10, dp_compatible=dp, seed=0)


def model_inputs(model):
    """Every batch the model's forward pass actually receives while training."""
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()) if module.training else None)
    return seen


def test_mixup_pairs_rows_with_one_beta_weight_per_batch():
    images = torch.eye(16).reshape(16, 1, 4, 4)
    targets = torch.eye(16)
    generator = torch.Generator().manual_seed(0)
    weights = []
    for _ in range(400):
        mixed, mixed_targets = mix_pairs(0.4)(images, targets, generator)
        flat = mixed.reshape(16, 16)
        assert torch.allclose(flat, mixed_targets), "images and targets get the same combination"
        assert torch.allclose(flat.sum(1), torch.ones(16))
        top = flat.max(1).values
        weights.append(float(flat[0][0]) if flat[0].count_nonzero() == 2 else float(top[0]))
    # Beta(0.4, 0.4) has variance 1 / (4 (2 alpha + 1)) = 0.139; a fixed weight would have 0.
    assert np.var(weights) == pytest.approx(1 / (4 * 1.8), abs=0.03)


def test_mixup_trains_on_mixed_batches_not_on_the_records(client):
    model = fresh_model()
    seen = model_inputs(model)
    DefenseSpec("mixup", {"alpha": 1.0}).build().train_round(model, client, context(epochs=1))
    batches = torch.cat(seen).reshape(-1, 64)
    records = torch.as_tensor(client.images).reshape(-1, 64)
    nearest = torch.cdist(batches, records).min(1).values
    assert (nearest > 1e-4).float().mean() > 0.8, "most rows are mixtures, not records"


def test_label_smoothing_loss_is_the_smoothed_cross_entropy():
    objective = DefenseSpec("label-smoothing", {"smoothing": 0.2}).build()
    from fedmia.defenses.recipe import Recipe
    recipe = Recipe()
    objective.fill(recipe, None, context())
    logits = torch.randn(5, 4)
    labels = torch.tensor([0, 1, 2, 3, 1])
    log_p = torch.log_softmax(logits, 1)
    expected = -(0.8 * log_p[range(5), labels] + 0.2 / 4 * log_p.sum(1))
    assert torch.allclose(recipe.objective.per_sample(logits, labels), expected, atol=1e-6)


def test_label_smoothing_keeps_the_model_less_confident_on_its_records(client):
    confidence = {}
    for smoothing in (0.0, 0.5):
        model = fresh_model()
        DefenseSpec("label-smoothing", {"smoothing": smoothing}).build().train_round(model, client, context(epochs=6))
        probabilities = torch.softmax(torch.as_tensor(predict_logits(model, client.images)), 1)
        confidence[smoothing] = float(probabilities.max(1).values.mean())
    assert confidence[0.5] < confidence[0.0] - 0.1


def test_dropout_zeroes_linear_inputs_in_training_only(client):
    model = fresh_model()
    first_linear = next(m for m in model.modules() if isinstance(m, nn.Linear))
    features, inputs = [], []
    model.features.register_forward_hook(lambda module, args, out: features.append(out.detach().flatten(1)))
    first_linear.register_forward_hook(lambda module, args, out: inputs.append(args[0].detach()))
    DefenseSpec("dropout", {"p": 0.5}).build().train_round(model, client, context(epochs=1))
    before, after = torch.cat(features), torch.cat(inputs)
    alive = before != 0
    dropped = float((after[alive] == 0).float().mean())
    assert dropped == pytest.approx(0.5, abs=0.03), "each activation dropped with probability p"
    kept = alive & (after != 0)
    assert torch.allclose(after[kept], before[kept] / 0.5), "survivors scaled by 1 / (1 - p)"
    features.clear(), inputs.clear()
    predict_logits(model, client.images[:16])
    assert torch.equal(inputs[0], features[0]), "no dropout in evaluation"
    assert not first_linear._forward_pre_hooks, "the hook is removed after the round"


def test_weight_decay_reaches_the_optimizer(client):
    norms = {}
    for weight in (0.0, 0.5):
        model = fresh_model()
        DefenseSpec("weight-decay", {"weight": weight}).build().train_round(model, client, context(epochs=2))
        norms[weight] = float(sum(p.detach().square().sum() for p in model.parameters()))
    assert norms[0.5] < 0.8 * norms[0.0]


def test_early_stopping_runs_only_the_epochs_left_then_stops(client):
    defense = DefenseSpec("early-stopping", {"stop_epoch": 3}).build()
    reports = []
    for server_round in (1, 2, 3):
        state = defense.state_dict()
        defense = DefenseSpec("early-stopping", {"stop_epoch": 3}).build()
        defense.load_state_dict(state)
        reports.append(defense.train_round(fresh_model(), client, context(epochs=2, server_round=server_round)))
    assert [r.details.get("examples_seen") for r in reports[:2]] == [2 * 120, 1 * 120]
    assert reports[2].stopped and "early stopping" in reports[2].message


def test_relaxloss_ascends_below_alpha_and_descends_above(client):
    images = torch.as_tensor(client.images[:32])
    labels = torch.as_tensor(client.labels[:32])
    for alpha, direction in ((50.0, +1), (1e-3, -1)):
        model = fresh_model()
        objective = RelaxedLoss(alpha)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        model.train()
        before = float(nn.functional.cross_entropy(model(images), labels).detach())
        optimizer.zero_grad()
        objective.batch_loss(model(images), labels).backward()
        optimizer.step()
        after = float(nn.functional.cross_entropy(model(images), labels).detach())
        assert direction * (after - before) > 0, f"alpha {alpha}"


def test_relaxloss_flattened_targets_keep_the_true_confidence_and_spread_the_rest():
    logits = torch.tensor([[3.0, 1.0, 0.0, -1.0]])
    targets = flattened_targets(logits, torch.tensor([1]))
    p = torch.softmax(logits, 1)
    assert float(targets[0, 1]) == pytest.approx(float(p[0, 1]))
    rest = targets[0, [0, 2, 3]]
    assert torch.allclose(rest, torch.full((3,), (1 - float(p[0, 1])) / 3))


def test_mixup_with_dpsgd_says_its_epsilon_does_not_cover_the_client(client):
    report = DefenseSpec("mixup+dpsgd", {"alpha": 0.5, "epsilon": 4.0}).build().train_round(
        fresh_model(dp=True), client, context(epochs=1))
    assert report.privacy is not None and math.isfinite(report.privacy.epsilon)
    assert any("mixup" in reason for reason in report.details["epsilon_not_covering"])


@pytest.mark.parametrize("spec, params, problem", [
    ("relaxloss+dpsgd", {"epsilon": 4.0}, "couples the samples"),
    ("mixup+mixup", {}, "names a part twice"),
    ("label-smoothing+relaxloss", {}, "both set the objective"),
    ("none+mixup", {}, "cannot be combined"),
    ("mixup", {"alpha": -1}, "out of range"),
    ("dropout", {"p": 1.5}, "out of range"),
    ("early-stopping", {"stop_epoch": 2.5}, "whole number"),
    ("label-smoothing", {"eps": 0.1}, "has no parameter 'eps'"),
])
def test_bad_combinations_and_parameters_are_one_line_errors(spec, params, problem, client):
    with pytest.raises(FedmiaError, match=problem) as error:
        DefenseSpec(spec, params).build().train_round(fresh_model(dp=True), client, context(epochs=1))
    assert "\n" not in str(error.value)


def test_a_parameter_two_parts_take_is_written_under_the_part():
    with pytest.raises(FedmiaError, match="write it under the part's name"):
        DefenseSpec("mixup+relaxloss", {"alpha": 0.5}).build()
    defense = DefenseSpec("mixup+relaxloss", {"mixup": {"alpha": 0.5}, "relaxloss": {"alpha": 2.0}}).build()
    assert [part.alpha for part in defense.parts] == [0.5, 2.0]
