"""What every record-level DP defense shares: the budget over the whole federated run.

A client's target (epsilon, delta) covers every local step of every round it may train in. On
its first round it fixes delta (default `default_delta(n)`, below 1/n) and calibrates the noise
multiplier once for `total_rounds x local_epochs x ceil(n / batch_size)` steps at sample rate
q = batch_size / n. Each round draws Poisson samples at rate q, takes that round's noisy steps
and appends (sigma, q, steps) to the client's `AccountantRecord`, which travels in `state_dict`.
A round that would take the client past its epsilon is not trained (the client says so and
leaves the model untouched), so it never overspends.

The round report carries no training loss or accuracy (NaN): those are computed from the
client's records without noise, and the formal epsilon covers only what the mechanism releases.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fedmia.defenses.base import ClientData, Defense, RoundContext, RoundReport, check_param
from fedmia.errors import FedmiaError
from fedmia.privacy.accounting import ACCOUNTANTS, AccountantRecord, calibrate_noise_multiplier
from fedmia.privacy.budget import PrivacySpent, default_delta
from fedmia.defenses.recipe import TrainingSet
from fedmia.privacy.gradients import ClipGroup, PerSampleGradients, PerSampleLoss
from fedmia.seeding import stream_generator
from fedmia.training import Mixer, TrainingPlan, as_tensors, make_optimizer

NOT_RELEASED = float("nan")


@dataclass(frozen=True)
class StepPlan:
    """One round of noisy steps: `steps` Poisson samples at `sample_rate`, multiplier sigma."""

    noise_multiplier: float
    sample_rate: float
    steps: int

    @property
    def mechanism(self) -> tuple[float, float, int]:
        return (self.noise_multiplier, self.sample_rate, self.steps)


def round_sampling(num_examples: int, plan: TrainingPlan) -> tuple[float, int]:
    """(q, steps per round): expected batch `batch_size`, ceil(n / batch_size) steps an epoch."""
    sample_rate = min(1.0, plan.batch_for(num_examples) / num_examples)
    return sample_rate, plan.local_epochs * plan.steps_per_epoch(num_examples)


def poisson_batches(num_examples: int, sample_rate: float, steps: int,
                    generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Index batches, each example in each independently with probability `sample_rate`
    (batches may be empty: that is what the amplification-by-sampling bound assumes)."""
    for _ in range(steps):
        draws = torch.rand(num_examples, generator=generator, device=generator.device)
        yield torch.nonzero(draws < sample_rate).squeeze(1)


@dataclass(frozen=True)
class StepInputs:
    """What the noisy steps draw from and minimize: by default the client's records under
    cross-entropy; composed defenses (`recipe`) pass their training set, per-sample objective
    and batch mixer (which needs the set's probability `targets`)."""

    training: TrainingSet
    loss: PerSampleLoss | None = None
    mixer: Mixer | None = None


def noisy_sgd(model: nn.Module, gradients: PerSampleGradients, inputs: StepInputs, context: RoundContext,
              plan: StepPlan, groups_for_step: Callable[[int], Sequence[ClipGroup]]) -> None:
    """The round's noisy steps on `model` in place, with the plan's optimizer (SGD, momentum)."""
    device = context.plan.device
    model.to(device).train()
    optimizer = make_optimizer(model, context.plan)
    sampling = stream_generator(context.seed, "sampling", device)
    noise = stream_generator(context.seed, "noise", device)
    mixing = stream_generator(context.seed, "mixing", device)
    training = inputs.training
    images, labels = as_tensors(training.images, training.labels, device)
    if training.targets is not None:
        labels = torch.as_tensor(training.targets, device=device)
    expected_batch = plan.sample_rate * len(labels)
    for step, batch in enumerate(poisson_batches(len(labels), plan.sample_rate, plan.steps, sampling)):
        groups = groups_for_step(step)
        gradients.check_groups(groups)
        optimizer.zero_grad(set_to_none=True)
        batch_images, batch_labels = images[batch], labels[batch]
        if inputs.mixer is not None and len(batch):
            batch_images, batch_labels = inputs.mixer(batch_images, batch_labels, mixing)
        gradients.set_noisy_gradients(batch_images, batch_labels, groups, expected_batch, noise, inputs.loss)
        optimizer.step()


class PrivateDefense(Defense):
    """A defense whose rounds are accounted Poisson-subsampled Gaussian steps."""

    needs_dp_compatible_model = True

    def __init__(self, epsilon: float, delta: float | None = None, accountant: str = "rdp") -> None:
        self.epsilon = check_param("epsilon", epsilon, 1e-3, 1e6, defense=self.name)
        self.delta = None if delta is None else check_param("delta", delta, 1e-12, 0.1, defense=self.name)
        if not isinstance(accountant, str) or accountant not in ACCOUNTANTS:
            raise FedmiaError(f"defense {self.name!r}: accountant={accountant!r}; "
                              f"use one of {', '.join(ACCOUNTANTS)}")
        self.accountant = accountant
        self.noise_multiplier: float | None = None
        self.record: AccountantRecord | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"noise_multiplier": self.noise_multiplier,
                "record": None if self.record is None else self.record.to_json()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.noise_multiplier = state["noise_multiplier"]
        self.record = None if state["record"] is None else AccountantRecord.from_json(state["record"])

    def ledger(self, data: ClientData) -> AccountantRecord:
        """The client's accountant record; on its first round, with delta fixed for the run."""
        if self.record is None:
            self.record = AccountantRecord(self.accountant, self.delta or default_delta(len(data)))
        return self.record

    def plan_round(self, rows: int, data: ClientData, context: RoundContext) -> StepPlan:
        """This round's steps over `rows` training rows; calibrates sigma for the whole run on
        the first round."""
        sample_rate, steps = round_sampling(rows, context.plan)
        if self.noise_multiplier is None:
            self.noise_multiplier = calibrate_noise_multiplier(
                self.epsilon, self.ledger(data).delta, sample_rate, steps * context.total_rounds,
                self.accountant)
        return StepPlan(self.noise_multiplier, sample_rate, steps)

    def train_round(self, model: nn.Module, data: ClientData, context: RoundContext, *,
                    training: TrainingSet | None = None, loss: PerSampleLoss | None = None,
                    mixer: Mixer | None = None) -> RoundReport:
        """Noisy steps on the client's records, or on a composed defense's `training` set with
        its per-sample `loss` and `mixer` (see `recipe`)."""
        started = time.perf_counter()
        inputs = StepInputs(training or TrainingSet.of_client(data), loss, mixer)
        plan = self.plan_round(len(inputs.training), data, context)
        record = self.ledger(data)
        would_spend = record.epsilon_after(*plan.mechanism)
        stopped = would_spend > self.epsilon
        details: dict[str, Any] = {}
        if stopped:
            epsilon = record.epsilon()
        else:
            with PerSampleGradients(model) as gradients:
                details = self.train_private(model, gradients, inputs, data, context, plan)
            record.record(*plan.mechanism)
            epsilon = would_spend
        spent = PrivacySpent(epsilon, record.delta, self.accountant, plan.noise_multiplier,
                             plan.sample_rate, record.steps)
        message = (f"budget reached: another round would spend epsilon {would_spend:.4g} > "
                   f"{self.epsilon:g}; not training") if stopped else ""
        return RoundReport(len(data), NOT_RELEASED, NOT_RELEASED, time.perf_counter() - started, spent,
                           stopped=stopped, message=message, details=details)

    @abstractmethod
    def train_private(self, model: nn.Module, gradients: PerSampleGradients, inputs: StepInputs,
                      data: ClientData, context: RoundContext, plan: StepPlan) -> dict[str, Any]:
        """Take the plan's noisy steps on `model` in place (through `noisy_sgd`); return the
        round's defense-specific details (JSON values)."""
