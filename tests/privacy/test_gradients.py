"""Per-sample clipping and noise, checked against Opacus's own per-sample gradients and optimizer."""

import pytest
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from torch import nn

from fedmia.errors import FedmiaError
from fedmia.models import build_model
from fedmia.privacy.gradients import ClipGroup, PerSampleGradients

# Opacus's reference hooks note that the inputs need no gradient: expected here.
pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")


class Mixed(nn.Module):
    """Every per-sample path: Linear on 2-D and 3-D inputs, plain and grouped Conv2d,
    GroupNorm, and (unless `inplace` is off) an in-place ReLU right after a layer."""

    def __init__(self):
        super().__init__()
        self.inplace = True
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.norm = nn.GroupNorm(2, 4)
        self.grouped = nn.Conv2d(4, 4, 3, stride=2, groups=2, bias=False)
        self.tokens = nn.Linear(3, 5)
        self.head = nn.Linear(5 * 4, 3)

    def forward(self, x):
        x = nn.functional.relu(self.norm(self.conv(x)), inplace=self.inplace)
        x = self.grouped(x).flatten(2)[:, :, :3]
        return self.head(self.tokens(x).flatten(1))


def batch(size=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(size, 2, 5, 5, generator=generator), torch.randint(0, 3, (size,), generator=generator)


def opacus_per_sample(model, images, labels):
    """Opacus's hooks refuse an in-place op on a hooked layer's output, so it runs without."""
    model.inplace = False
    wrapped = GradSampleModule(model, loss_reduction="sum")
    nn.functional.cross_entropy(wrapped(images), labels, reduction="sum").backward()
    per_sample = {name: p.grad_sample.clone() for name, p in model.named_parameters()}
    wrapped._close()
    model.zero_grad(set_to_none=True)
    model.inplace = True
    return per_sample


@pytest.mark.parametrize("model_fn", [lambda: Mixed(), lambda: build_model("cnn", (2, 5, 5), 3, dp_compatible=True)])
def test_layer_norms_and_weighted_sums_match_opacus(model_fn):
    torch.manual_seed(0)
    model = model_fn()
    images, labels = batch()
    expected = opacus_per_sample(model, images, labels)
    weights = torch.linspace(0.1, 1.0, len(labels))
    with PerSampleGradients(model) as gradients:
        samples = gradients.compute(images, labels)
        for layer_name, layer in samples.items():
            names = [f"{layer_name}.{n}" for n, _ in gradients.layers[layer_name].named_parameters()]
            norms = sum(expected[n].flatten(1).square().sum(1) for n in names)
            assert torch.allclose(layer.squared_norms(), norms, rtol=1e-4, atol=1e-6)
            sums = dict(zip(names, layer.weighted_sum(weights).values()))
            for name in names:
                assert torch.allclose(sums[name], torch.einsum("i,i...->...", weights, expected[name]), atol=1e-5)


def test_flat_clipping_without_noise_equals_opacus_dp_optimizer():
    torch.manual_seed(0)
    model = build_model("cnn", (2, 5, 5), 3, dp_compatible=True)
    images, labels = batch(8)
    clip, expected_batch = 0.05, 10.0
    wrapped = GradSampleModule(model)
    optimizer = DPOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), noise_multiplier=0.0,
                            max_grad_norm=clip, expected_batch_size=int(expected_batch))
    nn.functional.cross_entropy(wrapped(images), labels).backward()
    optimizer.pre_step()
    reference = {name: p.grad.clone() for name, p in model.named_parameters()}
    wrapped._close()
    with PerSampleGradients(model) as gradients:
        group = ClipGroup(tuple(gradients.layers), clip, 0.0)
        gradients.set_noisy_gradients(images, labels, [group], expected_batch, torch.Generator())
    for name, parameter in model.named_parameters():
        assert torch.allclose(parameter.grad, reference[name], atol=1e-6), name


def test_per_layer_clipping_bounds_every_layer_of_every_sample():
    torch.manual_seed(0)
    model = build_model("cnn", (2, 5, 5), 3, dp_compatible=True)
    images, labels = batch(1)
    with PerSampleGradients(model) as gradients:
        groups = [ClipGroup((name,), 1e-3, 0.0) for name in gradients.layers]
        gradients.set_noisy_gradients(images, labels, groups, 1.0, torch.Generator())
        for name, parameters in gradients.trainable.items():
            norm = torch.cat([p.grad.flatten() for p in parameters]).norm()
            assert norm <= 1e-3 * (1 + 1e-5), name


def test_noise_std_is_sigma_times_clip_over_the_expected_batch_per_group():
    model = nn.Sequential(nn.Linear(200, 300), nn.Linear(300, 100))
    empty = torch.zeros((0, 200)), torch.zeros(0, dtype=torch.long)
    with PerSampleGradients(model) as gradients:
        groups = [ClipGroup(("0",), 2.0, 0.5), ClipGroup(("1",), 0.5, 4.0)]
        gradients.set_noisy_gradients(*empty, groups, 10.0, torch.Generator().manual_seed(0))
    assert model[0].weight.grad.std().item() == pytest.approx(0.5 * 2.0 / 10, rel=0.02)
    assert model[1].weight.grad.std().item() == pytest.approx(4.0 * 0.5 / 10, rel=0.02)


def test_layers_without_a_per_sample_rule_are_refused():
    with pytest.raises(FedmiaError, match="BatchNorm2d"):
        PerSampleGradients(build_model("cnn", (1, 8, 8), 10))


def test_groups_must_cover_every_layer_once():
    with PerSampleGradients(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))) as gradients:
        with pytest.raises(ValueError):
            gradients.check_groups([ClipGroup(("0",), 1.0, 1.0)])
