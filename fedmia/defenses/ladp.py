"""`ladp`: layered adaptive DP (seed 002), with an accounting that is actually valid.

Each layer l (a module's parameters) is clipped per sample to its own norm C_l and gets
Gaussian noise sigma_l * C_l. All layers share one Poisson sample, so a step is one subsampled
Gaussian mechanism with effective multiplier sigma_eff = (sum_l sigma_l^-2)^(-1/2)
(`effective_noise_multiplier`). sigma_eff is calibrated to the client's budget exactly like
flat DP-SGD (see `private`), and the sigma_l are allocated under that constraint.

Allocation: every round, a per-layer sensitivity score (the empirical Fisher information per
parameter, E||d log p(y|x) / d theta_l||^2 / |theta_l|) is computed on the received global
model with synthetic inputs (uniform noise images, labels drawn from the model's own
predictions). No private record is touched, so the allocation costs no privacy. The more
sensitive half of the layers is clipped to `sensitive_clip` with relative noise 1; the others
to `other_clip` with relative noise `other_noise` (0.5 = half the noise multiplier, as the seed
proposes).
"""

from __future__ import annotations

import numpy as np
import torch
from opacus import GradSampleModule
from torch import nn

from fedmia.defenses.base import ClientData, RoundContext, check_param
from fedmia.defenses.private import PrivateDefense, StepPlan, TrainOutcome
from fedmia.privacy.accounting import allocate_layer_sigmas, effective_noise_multiplier

SYNTHETIC_PROBES = 64


def layer_groups(model: nn.Module) -> dict[str, list[str]]:
    """Parameter names grouped by the module that owns them (one 'layer' each)."""
    groups: dict[str, list[str]] = {}
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            groups.setdefault(name.rsplit(".", 1)[0], []).append(name)
    return groups


def fisher_scores(model: nn.Module, input_shape: tuple[int, ...], seed: int) -> dict[str, float]:
    """Per-layer empirical Fisher information per parameter, on synthetic inputs only."""
    generator = torch.Generator().manual_seed(seed)
    probes = torch.rand((SYNTHETIC_PROBES, *input_shape), generator=generator)
    model.eval()
    log_probs = nn.functional.log_softmax(model(probes), dim=1)
    labels = torch.multinomial(log_probs.exp().detach(), 1, generator=generator).squeeze(1)
    model.zero_grad(set_to_none=True)
    nn.functional.nll_loss(log_probs, labels, reduction="sum").backward()
    parameters = dict(model.named_parameters())
    scores = {}
    for layer, names in layer_groups(model).items():
        squared = sum(float(parameters[n].grad.pow(2).sum()) for n in names if parameters[n].grad is not None)
        size = sum(parameters[n].numel() for n in names)
        scores[layer] = squared / (size * SYNTHETIC_PROBES)
    model.zero_grad(set_to_none=True)
    return scores


class LayeredAdaptiveDP(PrivateDefense):
    name = "ladp"

    def __init__(self, epsilon: float, delta: float | None = None, max_grad_norm: float = 1.0,
                 accountant: str = "rdp", sensitive_clip: float = 1.0, other_clip: float = 5.0,
                 other_noise: float = 0.5) -> None:
        super().__init__(epsilon, delta, max_grad_norm, accountant)
        self.sensitive_clip = check_param("sensitive_clip", sensitive_clip, 1e-6, defense=self.name)
        self.other_clip = check_param("other_clip", other_clip, 1e-6, defense=self.name)
        self.other_noise = check_param("other_noise", other_noise, 1e-3, 1e3, defense=self.name)

    def allocate(self, model: nn.Module, input_shape: tuple[int, ...], sigma_eff: float,
                 seed: int) -> dict[str, dict[str, float]]:
        """Clip norm and noise multiplier per layer, with effective multiplier `sigma_eff`."""
        scores = fisher_scores(model, input_shape, seed)
        median = float(np.median(list(scores.values())))
        sensitive = {layer: score >= median for layer, score in scores.items()}
        relative = [1.0 if sensitive[layer] else self.other_noise for layer in scores]
        sigmas = allocate_layer_sigmas(sigma_eff, relative)
        return {layer: {"clip": self.sensitive_clip if sensitive[layer] else self.other_clip,
                        "sigma": sigma, "fisher": scores[layer], "sensitive": sensitive[layer]}
                for layer, sigma in zip(scores, sigmas)}

    def train_private(self, model: nn.Module, data: ClientData, context: RoundContext,
                      plan: StepPlan) -> TrainOutcome:
        allocation = self.allocate(model, data.images.shape[1:], plan.noise_multiplier, context.seed)
        sigma_eff = effective_noise_multiplier([a["sigma"] for a in allocation.values()])
        loss, accuracy = noisy_layered_sgd(model, data, context, plan, allocation)
        return TrainOutcome(loss, accuracy, {"sigma_eff": sigma_eff, "layers": allocation})


def noisy_layered_sgd(model: nn.Module, data: ClientData, context: RoundContext, plan: StepPlan,
                      allocation: dict[str, dict[str, float]]) -> tuple[float, float]:
    """`plan.steps` steps: Poisson sample at rate q, per-sample per-layer clipping, per-layer
    noise, average over the expected batch size q*n, SGD with momentum."""
    device = context.plan.device
    wrapped = GradSampleModule(model.to(device).train())
    groups = layer_groups(model)
    parameters = dict(model.named_parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=context.plan.lr, momentum=context.plan.momentum)
    generator = torch.Generator().manual_seed(context.seed)
    images, labels = torch.as_tensor(data.images, device=device), torch.as_tensor(data.labels, device=device)
    expected_batch = plan.sample_rate * len(labels)
    total_loss, correct, seen = 0.0, 0, 0
    for _ in range(plan.steps):
        batch = torch.nonzero(torch.rand(len(labels), generator=generator) < plan.sample_rate).squeeze(1)
        optimizer.zero_grad(set_to_none=True)
        if len(batch):
            logits = wrapped(images[batch])
            loss = nn.functional.cross_entropy(logits, labels[batch], reduction="sum")
            loss.backward()
            total_loss += float(loss.detach())
            correct += int((logits.argmax(1) == labels[batch]).sum())
            seen += len(batch)
        for layer, names in groups.items():
            clip, sigma = allocation[layer]["clip"], allocation[layer]["sigma"]
            per_sample = [parameters[n].grad_sample.flatten(1) for n in names
                          if len(batch) and parameters[n].grad_sample is not None]
            norms = torch.cat(per_sample, dim=1).norm(dim=1) if per_sample else None
            for name in names:
                parameter = parameters[name]
                summed = torch.zeros_like(parameter)
                if norms is not None:
                    factor = (clip / (norms + 1e-6)).clamp(max=1.0)
                    summed = torch.einsum("i,i...->...", factor, parameter.grad_sample)
                noise = torch.normal(0.0, sigma * clip, parameter.shape, generator=generator)
                parameter.grad = (summed + noise.to(device)) / expected_batch
                parameter.grad_sample = None
        optimizer.step()
    wrapped._close()
    return total_loss / max(seen, 1), correct / max(seen, 1)
