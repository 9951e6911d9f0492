"""What every record-level DP defense shares: the budget over the whole federated run.

The client's target (epsilon, delta) covers every local step of every round it may train in:
the noise multiplier is calibrated once, on the client's first round, for
`total_rounds x local_epochs x ceil(n / batch_size)` steps at sample rate 1 / ceil(n / batch_size).
Each round appends (sigma, q, steps) to the accountant's history; a round that would take the
client past its epsilon is not trained (the client says so), so it never overspends.
"""

from __future__ import annotations

import math
import time
from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from fedmia.defenses.base import ClientData, Defense, RoundContext, RoundReport, check_param
from fedmia.errors import FedmiaError
from fedmia.privacy.accounting import ACCOUNTANTS, calibrate_noise_multiplier, epsilon_of
from fedmia.privacy.budget import PrivacySpent, default_delta


@dataclass(frozen=True)
class StepPlan:
    """One round of noisy steps: Poisson sampling at `sample_rate` for `steps` steps."""

    noise_multiplier: float
    sample_rate: float
    steps: int
    max_grad_norm: float


@dataclass(frozen=True)
class TrainOutcome:
    loss: float
    accuracy: float
    details: dict[str, Any] = field(default_factory=dict)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    return max(1, math.ceil(num_examples / batch_size))


class PrivateDefense(Defense):
    """A defense whose rounds are accounted subsampled Gaussian steps."""

    needs_dp_compatible_model = True

    def __init__(self, epsilon: float, delta: float | None = None, max_grad_norm: float = 1.0,
                 accountant: str = "rdp") -> None:
        self.epsilon = check_param("epsilon", epsilon, 1e-3, 1e6, defense=self.name)
        self.delta = None if delta is None else check_param("delta", delta, 1e-12, 0.1, defense=self.name)
        self.max_grad_norm = check_param("max_grad_norm", max_grad_norm, 1e-6, defense=self.name)
        if accountant not in ACCOUNTANTS:
            raise FedmiaError(f"defense {self.name!r}: accountant={accountant!r}; use rdp or prv")
        self.accountant = accountant
        self.noise_multiplier: float | None = None
        self.history: list[list[float]] = []

    def state_dict(self) -> dict[str, Any]:
        return {"noise_multiplier": self.noise_multiplier, "delta": self.delta,
                "history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.noise_multiplier = state["noise_multiplier"]
        self.delta = state["delta"]
        self.history = [list(entry) for entry in state["history"]]

    def round_plan(self, data: ClientData, context: RoundContext) -> StepPlan:
        """This round's steps; calibrates sigma for the whole run on the first call."""
        per_epoch = steps_per_epoch(len(data), context.plan.batch_size)
        sample_rate = 1.0 / per_epoch
        round_steps = per_epoch * context.plan.local_epochs
        if self.delta is None:
            self.delta = default_delta(len(data))
        if self.noise_multiplier is None:
            self.noise_multiplier = calibrate_noise_multiplier(
                self.epsilon, self.delta, sample_rate, round_steps * context.total_rounds, self.accountant)
        return StepPlan(self.noise_multiplier, sample_rate, round_steps, self.max_grad_norm)

    def spent(self, history: list[list[float]]) -> PrivacySpent:
        steps = int(sum(entry[2] for entry in history))
        sample_rate = history[-1][1] if history else 0.0
        return PrivacySpent(epsilon_of(history, self.delta, self.accountant), self.delta, self.accountant,
                            self.noise_multiplier or 0.0, sample_rate, steps)

    def train_round(self, model: nn.Module, data: ClientData, context: RoundContext) -> RoundReport:
        started = time.perf_counter()
        plan = self.round_plan(data, context)
        planned = self.history + [[plan.noise_multiplier, plan.sample_rate, plan.steps]]
        if epsilon_of(planned, self.delta, self.accountant) > self.epsilon * (1 + 1e-9):
            return RoundReport(len(data), float("nan"), float("nan"), time.perf_counter() - started,
                               self.spent(self.history), stopped=True,
                               message=f"budget epsilon={self.epsilon} would be exceeded; not training")
        outcome = self.train_private(model, data, context, plan)
        self.history = planned
        return RoundReport(len(data), outcome.loss, outcome.accuracy, time.perf_counter() - started,
                           self.spent(self.history), details=outcome.details)

    @abstractmethod
    def train_private(self, model: nn.Module, data: ClientData, context: RoundContext,
                      plan: StepPlan) -> TrainOutcome:
        """Run `plan.steps` noisy steps on `model` in place."""
