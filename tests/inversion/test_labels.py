"""Label recovery from the last layer of a real client's update (digits, SmallCNN)."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from fedmia.data import load_dataset
from fedmia.errors import FedmiaError
from fedmia.inversion.gradient import observe_round
from fedmia.inversion.labels import batch_labels, estimated_gradient, recover_labels, single_label
from fedmia.models import build_model
from fedmia.training import TrainingPlan

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def by_label(digits, labels: list[int]) -> np.ndarray:
    """Indices of the first records with these labels (repeats take the next record)."""
    taken: list[int] = []
    for label in labels:
        taken.append(next(i for i in np.flatnonzero(digits.labels == label) if i not in taken))
    return np.array(taken)


def fedsgd(digits, rows: np.ndarray, model: nn.Module | None = None, **plan):
    model = model or build_model("cnn", (1, 8, 8), 10, seed=0)
    return observe_round(model, digits.images[rows], digits.labels[rows],
                         TrainingPlan(local_epochs=1, batch_size=len(rows), **plan), 0, 10)


def test_fedsgd_gradient_is_recovered_exactly_despite_momentum_and_weight_decay(digits):
    rows = by_label(digits, [1, 4, 4])
    update = fedsgd(digits, rows, weight_decay=1e-3)
    model = copy.deepcopy(update.sent).train()
    loss = nn.functional.cross_entropy(model(torch.as_tensor(digits.images[rows])),
                                       torch.as_tensor(digits.labels[rows]))
    truth = torch.autograd.grad(loss, list(model.parameters()))
    for recovered, exact in zip(estimated_gradient(update), truth):
        torch.testing.assert_close(recovered, exact, atol=1e-5, rtol=1e-3)


def test_single_record_label_is_exact(digits):
    for label in range(10):
        update = fedsgd(digits, by_label(digits, [label]))
        assert single_label(update) == label
        assert recover_labels(update, 0).tolist() == [label]


@pytest.mark.parametrize("labels", [[3, 3, 5, 7, 7, 7], [0, 2, 2, 9], [6] * 5])
def test_batch_label_multiset_is_exact_on_fedsgd(digits, labels):
    update = fedsgd(digits, by_label(digits, labels))
    assert batch_labels(update, 0).tolist() == sorted(labels)


def test_batch_counts_from_a_head_without_bias(digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(),
                          nn.Linear(512, 10, bias=False))
    labels = [1, 1, 8, 2]
    assert batch_labels(fedsgd(digits, by_label(digits, labels), model), 0).tolist() == sorted(labels)


def test_fedavg_labels_are_approximate_but_find_the_classes(digits):
    labels = [0, 0, 3, 5]
    rows = by_label(digits, labels)
    update = observe_round(build_model("cnn", (1, 8, 8), 10, seed=0), digits.images[rows],
                           digits.labels[rows], TrainingPlan(local_epochs=1, batch_size=2), 0, 10)
    assert update.steps == 2
    assert set(recover_labels(update, 0).tolist()) == set(labels)


def test_recovery_leaves_the_sent_model_alone(digits):
    update = fedsgd(digits, by_label(digits, [2, 2, 4]))
    before = copy.deepcopy(update.sent.state_dict())
    batch_labels(update, 0)
    for name, tensor in update.sent.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_a_model_without_a_class_head_is_a_one_line_error(digits):
    torch.manual_seed(0)
    headless = nn.Sequential(nn.Flatten(), nn.Linear(64, 10), nn.ReLU())
    update = fedsgd(digits, by_label(digits, [1]), headless)
    wider = type(update)(update.sent, update.returned, 1, update.plan, 12, update.input_shape)
    with pytest.raises(FedmiaError, match="final linear layer with 12 outputs") as error:
        single_label(wider)
    assert "\n" not in str(error.value)
