"""mixup-mmd at its mechanism: the MMD on hand-made outputs, the class-matched validation
records it draws, the mixed batches it trains on, and training that really shrinks the
discrepancy between member and non-member outputs; the public pool it needs, its parameters,
and its refusal of per-sample clipping and of a second data part."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from fedmia.defenses import DPSGD, ClientData, RoundContext
from fedmia.defenses.mixup import MixedData, Mixup
from fedmia.defenses.mixup_mmd import ClassMatchedPairs, MixupMMD, classwise_mmd, gaussian_mmd
from fedmia.defenses.recipe import fill_recipe, train_recipe_round
from fedmia.errors import FedmiaError
from fedmia.models import build_model
from fedmia.training import TrainingPlan, predict_logits

#: Enough local epochs on 100 records for the small CNN to overfit them.
PLAN = TrainingPlan(local_epochs=15, batch_size=16, lr=0.05)
CONTEXT = RoundContext(1, 1, PLAN, 0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fresh_model(dp=False):
    return build_model("cnn", (1, 8, 8), 10, dp_compatible=dp, seed=0)


def random_outputs(generator, rows, shift=0.0):
    """Softmax rows of random logits; `shift` raises class 0's logit."""
    logits = 3 * torch.randn(rows, 10, generator=generator)
    logits[:, 0] += shift
    return logits.softmax(1)


def test_mmd_of_hand_made_outputs():
    # One point each side, at squared distance 2, bandwidth 1: 2 - 2 exp(-1).
    assert float(gaussian_mmd(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]))) == pytest.approx(
        2 - 2 * math.exp(-1))
    generator = torch.Generator().manual_seed(0)
    a, b, shifted = (random_outputs(generator, 300), random_outputs(generator, 300),
                     random_outputs(generator, 300, shift=3.0))
    assert float(gaussian_mmd(a, a)) == pytest.approx(0.0, abs=1e-6)
    same, apart = float(gaussian_mmd(a, b)), float(gaussian_mmd(a, shifted))
    assert same < 0.005 and apart > 0.03 and apart > 10 * same, (same, apart)


def test_mmd_is_taken_within_classes_present_on_both_sides():
    generator = torch.Generator().manual_seed(1)
    a, shifted = random_outputs(generator, 40), random_outputs(generator, 40, shift=3.0)
    x = torch.cat([a[:20], a[20:]])
    y = torch.cat([a[:20], shifted[20:], a[:5]])
    x_labels = torch.tensor([0] * 20 + [1] * 20)
    y_labels = torch.tensor([0] * 20 + [1] * 20 + [2] * 5)
    # Class 0 is identical on both sides, class 1 is shifted, class 2 has no member: ignored.
    expected = (0.0 + float(gaussian_mmd(a[20:], shifted[20:]))) / 2
    assert float(classwise_mmd(x, x_labels, y, y_labels)) == pytest.approx(expected, rel=1e-5)
    # Pooled, the same outputs would compare class 0 rows with class 1 rows.
    assert float(gaussian_mmd(torch.cat([a[:20], a[:20]]), a)) > 0.01


def test_validation_records_match_the_members_class_by_class(split):
    client, _ = split
    without_nines = client.public_labels != 9
    public = (torch.as_tensor(client.public_images[without_nines]),
              torch.as_tensor(client.public_labels[without_nines]))
    member_label = {image.tobytes(): label for image, label in zip(client.images, client.labels)}
    public_label = {image.numpy().tobytes(): int(label) for image, label in zip(*public)}
    pairs = ClassMatchedPairs(client, public, "cpu", seed=0)
    drawn_labels = []
    for _ in range(20):
        members, validation, labels = pairs.draw(16)
        assert [member_label[m.numpy().tobytes()] for m in members] == labels.tolist()
        assert [public_label[v.numpy().tobytes()] for v in validation] == labels.tolist()
        drawn_labels += labels.tolist()
    assert 9 in client.labels and 9 not in drawn_labels, "members of a class the pool lacks are left out"
    assert set(drawn_labels) == set(range(9))


def test_training_shrinks_the_discrepancy_between_member_and_held_out_outputs(split):
    """The same seed and mixup, weight 0 against 3: on the whole member set and held-out set,
    the class-wise MMD of the regularized model's outputs is clearly smaller."""
    client, (held_images, held_labels) = split
    discrepancy = {}
    for weight in (0.0, 3.0):
        model = fresh_model()
        report = MixupMMD(alpha=1.0, weight=weight).train_round(model, client, CONTEXT)
        assert np.isfinite(report.train_loss)
        member_outputs = torch.as_tensor(predict_logits(model, client.images)).softmax(1)
        held_outputs = torch.as_tensor(predict_logits(model, held_images)).softmax(1)
        discrepancy[weight] = float(classwise_mmd(member_outputs, torch.as_tensor(client.labels),
                                                  held_outputs, torch.as_tensor(held_labels)))
    assert discrepancy[3.0] < 0.7 * discrepancy[0.0], discrepancy


def test_each_step_adds_the_weighted_mmd_of_a_class_matched_draw_to_the_mixed_batch_loss(split):
    client, _ = split
    recipe = fill_recipe((MixupMMD(alpha=1.0, weight=2.0),), client, CONTEXT)
    assert isinstance(recipe.data, MixedData) and recipe.data.mixer is not None
    assert recipe.filled_by == {"data": "mixup-mmd", "objective": "mixup-mmd"}
    model, objective = fresh_model(), recipe.objective
    objective.bind(model)
    logits, targets = torch.randn(16, 10), torch.randn(16, 10).softmax(1)
    loss = float(objective.batch_loss(logits, targets).detach())

    public = (torch.as_tensor(client.public_images), torch.as_tensor(client.public_labels))
    members, validation, labels = ClassMatchedPairs(client, public, "cpu", CONTEXT.seed).draw(16)
    with torch.no_grad():
        outputs = model(torch.cat([members, validation])).softmax(1)
    discrepancy = float(classwise_mmd(outputs[:16], labels, outputs[16:], labels))
    assert discrepancy > 1e-4
    assert loss == pytest.approx(float(nn.functional.cross_entropy(logits, targets)) + 2.0 * discrepancy, rel=1e-5)


def test_a_run_without_a_public_pool_is_told_to_set_one(split):
    client, _ = split
    assert MixupMMD.needs_public_pool, "so a config without a pool is refused before training"
    private_only = ClientData(0, client.images, client.labels, 10)
    with pytest.raises(FedmiaError, match="'mixup-mmd' needs a public pool; set public_size"):
        MixupMMD().train_round(fresh_model(), private_only, CONTEXT)


@pytest.mark.parametrize("params", [
    {"alpha": 0}, {"alpha": "one"}, {"weight": -1}, {"weight": float("nan")}, {"weight": False},
])
def test_bad_parameters_are_user_errors(params):
    with pytest.raises(FedmiaError, match="mixup-mmd"):
        MixupMMD(**params)


def test_per_sample_clipping_and_a_second_mixer_are_refused(split):
    client, _ = split
    model = fresh_model(dp=True)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(FedmiaError, match="'mixup-mmd' couples the samples"):
        train_recipe_round((MixupMMD(), DPSGD(epsilon=1.0)), model, client, CONTEXT)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(FedmiaError, match="'mixup' and 'mixup-mmd' both set the data"):
        train_recipe_round((Mixup(), MixupMMD()), model, client, CONTEXT)
