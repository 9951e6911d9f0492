"""`dpsgd`: record-level DP-SGD. Each sample's gradient over the whole model is clipped to norm
C (`max_grad_norm`), the sum gets Gaussian noise of std sigma C, on Poisson samples; sigma is
calibrated so that the client's (epsilon, delta) covers the whole run (see `private`)."""

from __future__ import annotations

from typing import Any

from torch import nn

from fedmia.defenses.base import ClientData, RoundContext, check_param
from fedmia.defenses.private import PrivateDefense, StepInputs, StepPlan, noisy_sgd
from fedmia.privacy.gradients import ClipGroup, PerSampleGradients


class DPSGD(PrivateDefense):
    name = "dpsgd"

    def __init__(self, epsilon: float, delta: float | None = None, accountant: str = "rdp",
                 max_grad_norm: float = 1.0) -> None:
        super().__init__(epsilon, delta, accountant)
        self.max_grad_norm = check_param("max_grad_norm", max_grad_norm, 1e-6, defense=self.name)

    def train_private(self, model: nn.Module, gradients: PerSampleGradients, inputs: StepInputs,
                      data: ClientData, context: RoundContext, plan: StepPlan) -> dict[str, Any]:
        whole_model = [ClipGroup(tuple(gradients.layers), self.max_grad_norm, plan.noise_multiplier)]
        noisy_sgd(model, gradients, inputs, context, plan, lambda step: whole_model)
        return {"max_grad_norm": self.max_grad_norm}
