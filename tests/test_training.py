"""Local training: a full-batch plan (batch_size 0) is a FedSGD client."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedmia.defenses.private import round_sampling
from fedmia.training import TrainingPlan, train_epochs


class BatchRecorder(nn.Module):
    """A linear model that records the inputs of every training forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.batches: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.detach().clone())
        return self.linear(x)


def test_full_batch_plan_takes_one_step_on_every_record() -> None:
    rng = np.random.default_rng(0)
    images, labels = rng.random((11, 4)).astype(np.float32), rng.integers(0, 3, 11)
    model = BatchRecorder()
    start = {name: value.detach().clone() for name, value in model.linear.named_parameters()}
    plan = TrainingPlan(local_epochs=1, batch_size=0, lr=0.1, momentum=0.9)
    train_epochs(model, images, labels, plan, seed=3)
    assert len(model.batches) == 1
    assert sorted(map(tuple, model.batches[0].numpy())) == sorted(map(tuple, images))
    fresh = nn.Linear(4, 3)
    fresh.load_state_dict(start)
    nn.functional.cross_entropy(fresh(torch.as_tensor(images)), torch.as_tensor(labels)).backward()
    for name, value in model.linear.named_parameters():
        expected = start[name] - 0.1 * getattr(fresh, name).grad
        torch.testing.assert_close(value.detach(), expected)

def test_full_batch_sampling_rate_is_one_and_one_step_an_epoch() -> None:
    assert round_sampling(37, TrainingPlan(local_epochs=1, batch_size=0)) == (1.0, 1)
    assert round_sampling(37, TrainingPlan(local_epochs=3, batch_size=0)) == (1.0, 3)
    assert round_sampling(37, TrainingPlan(local_epochs=1, batch_size=16)) == (16 / 37, 3)
