"""advreg at its mechanism: the inference model it trains really tells members from non-members,
and a large weight really makes members harder to tell apart from non-members; the public pool
it needs, its parameters, and its refusal of per-sample clipping."""

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from fedmia.defenses import DPSGD, ClientData, RoundContext
from fedmia.defenses.advreg import AdversarialRegularization, target_vectors
from fedmia.defenses.mixup import Mixup
from fedmia.defenses.recipe import fill_recipe, train_recipe_round
from fedmia.errors import FedmiaError
from fedmia.models import build_model
from fedmia.training import TrainingPlan, predict_logits, train_epochs

#: Enough local epochs on 100 records for the small CNN to overfit them.
PLAN = TrainingPlan(local_epochs=15, batch_size=16, lr=0.05)
CONTEXT = RoundContext(1, 1, PLAN, 0)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fresh_model(dp=False):
    return build_model("cnn", (1, 8, 8), 10, dp_compatible=dp, seed=0)


def auc(member_scores, nonmember_scores):
    labels = np.r_[np.ones(len(member_scores)), np.zeros(len(nonmember_scores))]
    return roc_auc_score(labels, np.r_[member_scores, nonmember_scores])


def losses(model, images, labels):
    logits = torch.as_tensor(predict_logits(model, images)).float()
    return nn.functional.cross_entropy(logits, torch.as_tensor(labels), reduction="none").numpy()


def test_the_inference_model_learns_to_tell_members_from_non_members(split):
    """Weight 0 leaves the classifier alone, so h plays against a plainly overfitting model; it
    is judged on held-out records, not the public ones it trained against."""
    client, (held_images, held_labels) = split
    model = fresh_model()
    recipe = fill_recipe((AdversarialRegularization(weight=0.0, inference_steps=5),), client, CONTEXT)
    objective = recipe.objective
    objective.bind(model)
    train_epochs(model, client.images, client.labels, PLAN, CONTEXT.seed, loss_fn=objective.batch_loss)

    def member_scores(images, labels):
        logits = torch.as_tensor(predict_logits(model, images)).float()
        with torch.no_grad():
            return objective.inference(logits.log_softmax(1), target_vectors(torch.as_tensor(labels), 10)).numpy()

    advantage = auc(member_scores(client.images, client.labels), member_scores(held_images, held_labels))
    assert advantage > 0.6, f"h's AUC {advantage:.3f} is no better than chance (sd 0.03 here)"


def test_a_large_weight_makes_members_harder_to_tell_from_non_members(split):
    """The same seed, weight 0 against 3: a loss-threshold attack on members against held-out
    records does clearly worse on the regularized model."""
    client, (held_images, held_labels) = split
    attack_auc = {}
    for weight in (0.0, 3.0):
        model = fresh_model()
        report = AdversarialRegularization(weight=weight).train_round(model, client, CONTEXT)
        assert np.isfinite(report.train_loss)
        attack_auc[weight] = auc(-losses(model, client.images, client.labels),
                                 -losses(model, held_images, held_labels))
    assert attack_auc[0.0] > 0.65, f"the unregularized model must leak to test anything: {attack_auc}"
    assert attack_auc[3.0] < attack_auc[0.0] - 0.04, attack_auc


def test_h_is_rebuilt_from_the_round_seed(split):
    client, _ = split
    runs = []
    for _ in range(2):
        model = fresh_model()
        AdversarialRegularization(weight=1.0).train_round(model, client, RoundContext(1, 1, TrainingPlan(1), 5))
        runs.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(runs[0], runs[1])


def test_mixed_targets_reach_h_as_probability_vectors(split):
    client, _ = split
    report = train_recipe_round((Mixup(alpha=1.0), AdversarialRegularization(weight=1.0)), fresh_model(),
                                client, RoundContext(1, 1, TrainingPlan(1), 0))
    assert np.isfinite(report.train_loss)
    mixed = torch.tensor([[0.3, 0.7, 0.0]])
    assert torch.equal(target_vectors(mixed, 3), mixed)
    assert torch.equal(target_vectors(torch.tensor([2]), 3), torch.tensor([[0.0, 0.0, 1.0]]))


def test_a_run_without_a_public_pool_is_told_to_set_one(split):
    client, _ = split
    assert AdversarialRegularization.needs_public_pool, "so a config without a pool is refused before training"
    private_only = ClientData(0, client.images, client.labels, 10)
    with pytest.raises(FedmiaError, match="'advreg' needs a public pool; set public_size"):
        AdversarialRegularization().train_round(fresh_model(), private_only, CONTEXT)


@pytest.mark.parametrize("params", [
    {"weight": -0.1}, {"weight": "strong"}, {"inference_steps": 0}, {"inference_steps": 2.5},
    {"inference_lr": 0}, {"inference_lr": True},
])
def test_bad_parameters_are_user_errors(params):
    with pytest.raises(FedmiaError, match="advreg"):
        AdversarialRegularization(**params)


def test_per_sample_clipping_is_refused(split):
    client, _ = split
    model = fresh_model(dp=True)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(FedmiaError, match="'advreg' couples the samples"):
        train_recipe_round((AdversarialRegularization(), DPSGD(epsilon=1.0)), model, client, CONTEXT)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
