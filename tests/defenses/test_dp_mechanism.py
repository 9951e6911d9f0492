"""The private defenses' rounds, instrumented step by step: what each step actually applies must
be the Opacus-computed clipped sum of the sampled examples plus Gaussian noise of std sigma_l C_l
per layer, over exactly the number of steps the accountant charges, on Poisson samples at rate q.
"""

import json
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from torch import nn

from fedmia.data import load_dataset
from fedmia.defenses import DPSGD, ClientData, DefenseSpec, LayeredAdaptiveDP, RoundContext
from fedmia.models import build_model
from fedmia.privacy import effective_noise_multiplier
from fedmia.privacy.gradients import CLIP_STABILIZER, PerSampleGradients
from fedmia.seeding import stream_generator
from fedmia.training import TrainingPlan

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")

SHAPE = (1, 8, 8)


@dataclass
class ObservedStep:
    """One executed step: the batch size, the groups, and the noise the step really added
    (the applied gradient times the expected batch, minus the reference clipped sum)."""

    batch_size: int
    expected_batch: float
    noise: dict[str, torch.Tensor]
    scale: dict[str, float]


def reference_clipped_sum(state, images, labels, groups, loss_fn=None):
    """Per-sample gradients from Opacus's GradSampleModule on a copy of the model, clipped per
    group as DP-SGD prescribes, summed over the batch; the loss is cross-entropy unless a
    composed defense's per-sample `loss_fn` is given."""
    model = build_model("cnn", SHAPE, 10, dp_compatible=True)
    model.load_state_dict(state)
    wrapped = GradSampleModule(model, loss_reduction="sum")
    logits = wrapped(images)
    loss = (nn.functional.cross_entropy(logits, labels, reduction="sum") if loss_fn is None
            else loss_fn(logits, labels).sum())
    loss.backward()
    per_sample = {name: p.grad_sample for name, p in model.named_parameters()}
    total = {}
    for group in groups:
        names = [n for n in per_sample if n.rsplit(".", 1)[0] in group.layers]
        norms = sum(per_sample[n].flatten(1).square().sum(1) for n in names).sqrt()
        weights = (group.clip / (norms + CLIP_STABILIZER)).clamp(max=1.0)
        total.update({n: torch.einsum("i,i...->...", weights, per_sample[n]) for n in names})
    wrapped._close()
    return total


@pytest.fixture
def observed_steps(monkeypatch):
    steps: list[ObservedStep] = []
    original = PerSampleGradients.set_noisy_gradients

    def spy(self, inputs, labels, groups, expected_batch, generator, loss_fn=None):
        state = {k: v.clone() for k, v in self.model.state_dict().items()}
        reference = (reference_clipped_sum(state, inputs, labels, groups, loss_fn) if len(labels)
                     else {n: torch.zeros_like(p) for n, p in self.model.named_parameters()})
        original(self, inputs, labels, groups, expected_batch, generator, loss_fn)
        group_of = {layer: group for group in groups for layer in group.layers}
        noise, scale = {}, {}
        for name, parameter in self.model.named_parameters():
            group = group_of[name.rsplit(".", 1)[0]]
            noise[name] = parameter.grad * expected_batch - reference[name]
            scale[name] = group.noise_multiplier * group.clip
        steps.append(ObservedStep(len(labels), expected_batch, noise, scale))

    monkeypatch.setattr(PerSampleGradients, "set_noisy_gradients", spy)
    return steps


@pytest.fixture(scope="module")
def client():
    digits = load_dataset("digits")
    return ClientData(0, digits.images[:40], digits.labels[:40], 10)


def one_round(defense, client, epochs=1):
    plan = TrainingPlan(local_epochs=epochs, batch_size=16)
    model = build_model("cnn", SHAPE, 10, dp_compatible=True, seed=0)
    return defense.train_round(model, client, RoundContext(1, 1, plan, seed=7))


def standardized_noise(steps):
    return torch.cat([(step.noise[name] / step.scale[name]).flatten()
                      for step in steps for name in step.noise])


# A huge epsilon gives a tiny sigma, so any error in the per-sample gradients (e.g. a scale of
# B from a mean-reduced loss) dwarfs the noise; a small one checks the noise itself.
@pytest.mark.parametrize("epsilon", [2.0, 1e4])
@pytest.mark.parametrize("defense_class", [DPSGD, LayeredAdaptiveDP])
def test_each_step_adds_exactly_the_clipped_sum_plus_the_accounted_noise(defense_class, epsilon, client,
                                                                         observed_steps):
    report = one_round(defense_class(epsilon=epsilon), client)
    assert len(observed_steps) == report.privacy.steps == math.ceil(40 / 16)
    assert all(step.expected_batch == pytest.approx(report.privacy.sample_rate * 40) for step in observed_steps)
    noise = standardized_noise(observed_steps)
    assert abs(float(noise.mean())) < 0.05 and float(noise.std()) == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("epsilon", [2.0, 1e4])
def test_a_composed_objective_is_clipped_and_noised_like_cross_entropy(epsilon, client, observed_steps):
    """label-smoothing+dpsgd: each step's applied gradient is Opacus's clipped sum of the
    smoothed per-sample losses plus the accounted noise."""
    defense = DefenseSpec("label-smoothing+dpsgd", {"smoothing": 0.3, "epsilon": epsilon}).build()
    report = one_round(defense, client)
    assert len(observed_steps) == report.privacy.steps
    assert "epsilon_not_covering" not in report.details, "smoothing reads no record outside the steps"
    noise = standardized_noise(observed_steps)
    assert abs(float(noise.mean())) < 0.05 and float(noise.std()) == pytest.approx(1.0, abs=0.05)


def test_ladp_noise_per_layer_follows_its_allocation_and_sigma_eff_is_the_accounted_sigma(client, observed_steps):
    report = one_round(LayeredAdaptiveDP(epsilon=2.0), client, epochs=4)
    layers = report.details["allocations"][0]["layers"]
    sigmas = [layer["sigma"] for layer in layers.values()]
    assert effective_noise_multiplier(sigmas) == pytest.approx(report.privacy.noise_multiplier)
    assert len({layer["clip"] for layer in layers.values()}) == 2, "sensitive and other layers differ"
    by_layer: dict[str, list[torch.Tensor]] = {}
    for step in observed_steps:
        for name, noise in step.noise.items():
            by_layer.setdefault(name.rsplit(".", 1)[0], []).append((noise / step.scale[name]).flatten())
    for layer, parts in by_layer.items():
        values = torch.cat(parts)
        if len(values) >= 2000:
            assert float(values.std()) == pytest.approx(1.0, abs=0.08), layer


def test_poisson_sampling_includes_each_example_at_rate_q(client, observed_steps):
    report = one_round(DPSGD(epsilon=8.0), client, epochs=20)
    sizes = np.array([step.batch_size for step in observed_steps])
    assert len(sizes) == report.privacy.steps == 20 * 3
    rate = sizes.sum() / (40 * len(sizes))
    standard_error = math.sqrt(report.privacy.sample_rate * (1 - report.privacy.sample_rate) / (40 * len(sizes)))
    assert abs(rate - report.privacy.sample_rate) < 4 * standard_error
    assert sizes.std() > 0, "Poisson batches vary in size"


def test_ladp_allocation_reads_no_private_data(client):
    """Two clients with different data receive the same model: their first allocation (made
    before any of their own steps) must be identical."""
    digits = load_dataset("digits")
    other = ClientData(1, digits.images[500:540], digits.labels[500:540], 10)
    first = [one_round(LayeredAdaptiveDP(epsilon=2.0), data).details["allocations"][0] for data in (client, other)]
    assert json.dumps(first[0], sort_keys=True) == json.dumps(first[1], sort_keys=True)


def test_noise_and_sampling_come_from_their_own_streams_of_the_round_seed(client, observed_steps):
    """Step 1's noise is exactly the first draws of the round seed's noise stream, and its
    batch the first draws of the sampling stream: neither reuses the other's randomness."""
    report = one_round(DPSGD(epsilon=2.0), client)
    model = build_model("cnn", SHAPE, 10, dp_compatible=True)
    noise_stream = stream_generator(7, "noise")
    std = report.privacy.noise_multiplier * 1.0
    for name, parameter in model.named_parameters():
        expected = torch.normal(0.0, std, parameter.shape, generator=noise_stream)
        assert torch.allclose(observed_steps[0].noise[name], expected, atol=1e-4 * std), name
    draws = torch.rand(40, generator=stream_generator(7, "sampling"))
    assert observed_steps[0].batch_size == int((draws < report.privacy.sample_rate).sum())
