"""`ladp`: layered adaptive DP (seed 002), with an accounting that is valid.

Each layer l (a module's own parameters) is clipped per sample to its own norm C_l and gets
Gaussian noise of std sigma_l C_l. All layers share one Poisson sample, so a step is one
subsampled Gaussian mechanism with effective multiplier sigma_eff = (sum_l sigma_l^-2)^(-1/2)
(`effective_noise_multiplier`). sigma_eff is calibrated to the client's budget exactly like
flat DP-SGD's sigma (see `private`), and the sigma_l are allocated under that constraint.

Allocation, at the start of every round and then every `reallocate_every` local steps: a
per-layer sensitivity score, the Fisher information per parameter, is computed from the model
alone, on synthetic inputs (`fisher_scores`). The more sensitive half of the layers is clipped to
`sensitive_clip` with relative noise 1; the others to `other_clip` with relative noise
`other_noise` (0.5: half the multiplier, as the seed proposes). The model the scores are computed
on is the received global model or one derived from it by the client's own noisy steps, which is
post-processing of what the mechanism released, so no allocation reads a private record and
none costs privacy.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from fedmia.defenses.base import ClientData, RoundContext, check_param
from fedmia.defenses.private import PrivateDefense, StepInputs, StepPlan, noisy_sgd
from fedmia.errors import FedmiaError
from fedmia.privacy.accounting import allocate_layer_sigmas, effective_noise_multiplier
from fedmia.privacy.gradients import ClipGroup, PerSampleGradients
from fedmia.seeding import stream_generator

SYNTHETIC_PROBES = 64


@dataclass(frozen=True)
class LayerAllocation:
    """One layer's share: its Fisher score, whether it counts as sensitive, C_l and sigma_l."""

    fisher: float
    sensitive: bool
    clip: float
    sigma: float


def fisher_scores(model: nn.Module, gradients: PerSampleGradients, input_shape: tuple[int, ...],
                  generator: torch.Generator) -> dict[str, float]:
    """Per layer, E_x E_{y ~ p(.|x)} |d log p(y|x) / d theta_l|^2 / |theta_l|: the trace of the
    layer's Fisher information per parameter. x is uniform noise in [0, 1] (the range fedmia
    stores images in) and y is drawn from the model's own prediction: only the model is read."""
    probes = torch.rand((SYNTHETIC_PROBES, *input_shape), generator=generator, device=generator.device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        probabilities = nn.functional.softmax(model(probes), dim=1)
    labels = torch.multinomial(probabilities, 1, generator=generator).squeeze(1)
    samples = gradients.compute(probes, labels)
    model.train(was_training)
    scores = {}
    for name, parameters in gradients.trainable.items():
        size = sum(p.numel() for p in parameters)
        scores[name] = float(samples[name].squared_norms().mean()) / size if name in samples else 0.0
    return scores


def allocate_layers(scores: dict[str, float], sigma_eff: float, sensitive_clip: float, other_clip: float,
                    other_noise: float) -> dict[str, LayerAllocation]:
    """The seed's rule: the ceil(L/2) highest-scoring layers are sensitive (clip `sensitive_clip`,
    relative noise 1), the rest get `other_clip` and relative noise `other_noise`; the sigma_l
    are scaled so that their effective multiplier is exactly `sigma_eff`."""
    ranked = sorted(scores, key=scores.__getitem__, reverse=True)
    sensitive = set(ranked[: math.ceil(len(ranked) / 2)])
    names = list(scores)
    sigmas = allocate_layer_sigmas(sigma_eff, [1.0 if name in sensitive else other_noise for name in names])
    return {name: LayerAllocation(scores[name], name in sensitive,
                                  sensitive_clip if name in sensitive else other_clip, sigma)
            for name, sigma in zip(names, sigmas)}


class LayeredAdaptiveDP(PrivateDefense):
    name = "ladp"

    def __init__(self, epsilon: float, delta: float | None = None, accountant: str = "rdp",
                 sensitive_clip: float = 1.0, other_clip: float = 5.0, other_noise: float = 0.5,
                 reallocate_every: int = 10) -> None:
        super().__init__(epsilon, delta, accountant)
        self.sensitive_clip = check_param("sensitive_clip", sensitive_clip, 1e-6, defense=self.name)
        self.other_clip = check_param("other_clip", other_clip, 1e-6, defense=self.name)
        self.other_noise = check_param("other_noise", other_noise, 1e-3, 1e3, defense=self.name)
        every = check_param("reallocate_every", reallocate_every, 1, defense=self.name)
        if not every.is_integer():
            raise FedmiaError(f"defense 'ladp': reallocate_every={reallocate_every} must be a whole "
                              "number of local steps")
        self.reallocate_every = int(every)

    def train_private(self, model: nn.Module, gradients: PerSampleGradients, inputs: StepInputs,
                      data: ClientData, context: RoundContext, plan: StepPlan) -> dict[str, Any]:
        probe_generator = stream_generator(context.seed, "probes", context.plan.device)
        allocations: list[dict[str, Any]] = []
        groups: list[ClipGroup] = []

        def groups_for_step(step: int) -> list[ClipGroup]:
            if step % self.reallocate_every == 0:
                scores = fisher_scores(model, gradients, data.images.shape[1:], probe_generator)
                layers = allocate_layers(scores, plan.noise_multiplier, self.sensitive_clip,
                                         self.other_clip, self.other_noise)
                groups[:] = [ClipGroup((name,), layer.clip, layer.sigma) for name, layer in layers.items()]
                allocations.append({"step": step, "layers": {name: asdict(layer) for name, layer in layers.items()}})
            return groups

        noisy_sgd(model, gradients, inputs, context, plan, groups_for_step)
        sigma_eff = effective_noise_multiplier([group.noise_multiplier for group in groups])
        return {"sigma_eff": sigma_eff, "allocations": allocations}
