"""The DP step's fast paths give what the plain definitions give: each convolution path against
per-sample autograd, the whole noisy step on fedmia's models against Opacus's per-sample
gradients, the noise drawn from the seeded stream as before, and the copy-free hooks."""

import pytest
import torch
from opacus import GradSampleModule
from torch import nn

from fedmia.models import build_model
from fedmia.privacy.gradients import (
    CLIP_STABILIZER, LARGE_IMAGE, ClipGroup, PerSampleGradients, _conv2d_weight_samples,
    _group_norm_samples, _grouped_kernel_is_faster, _patches)

# Opacus's reference hooks note that the inputs need no gradient: expected here.
pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook is firing")


@pytest.mark.parametrize("kernel, stride, padding, dilation, size", [
    (3, 1, 1, 1, (9, 7)), ((3, 2), 2, (1, 0), 1, (11, 8)), (3, 1, 2, 2, (10, 10)), (5, 3, 0, 1, (13, 16))])
def test_patches_are_unfold(kernel, stride, padding, dilation, size):
    layer = nn.Conv2d(3, 4, kernel, stride=stride, padding=padding, dilation=dilation)
    images = torch.randn(5, 3, *size, generator=torch.Generator().manual_seed(0))
    expected = nn.functional.unfold(images, layer.kernel_size, layer.dilation, layer.padding, layer.stride)
    assert torch.equal(_patches(layer, images), expected)


def per_sample_reference(layer, images, output_grads):
    """Sample by sample: the weight gradient of <layer(x_i), g_i>."""
    grads = [torch.autograd.grad((layer(image[None]) * grad[None]).sum(), layer.weight)[0]
             for image, grad in zip(images, output_grads)]
    return torch.stack(grads)


@pytest.mark.parametrize("channels, size, stride, dilation, path", [
    (16, 10, 1, 1, "grouped"), (8, 20, 2, 1, "grouped"), (32, 12, 1, 2, "grouped"), (3, 12, 1, 1, "patches"),
    (40, 8, 1, 1, "patches"), (4, 16, 1, 2, "patches"), (16, 4, 1, 1, "unfold"), (2, 9, 2, 1, "unfold")])
def test_each_convolution_path_gives_per_sample_gradients(channels, size, stride, dilation, path):
    torch.manual_seed(0)
    layer = nn.Conv2d(channels, 6, 3, stride=stride, padding=1, dilation=dilation)
    images = torch.randn(7, channels, size, size)
    output_grads = torch.randn_like(layer(images))
    positions = output_grads[0, 0].numel()
    grouped = _grouped_kernel_is_faster(layer, images, positions)
    taken = "grouped" if grouped else "patches" if positions >= LARGE_IMAGE else "unfold"
    assert taken == path
    per_sample = _conv2d_weight_samples(layer, images, output_grads)
    assert torch.allclose(per_sample, per_sample_reference(layer, images, output_grads), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(6,), (6, 5), (6, 5, 4)], ids=["flat", "sequence", "image"])
def test_group_norm_rule_is_opacus_rule(shape):
    torch.manual_seed(0)
    layer = nn.GroupNorm(3, 6)
    nn.init.normal_(layer.weight)
    activations = torch.randn(4, *shape)
    output_grads = torch.randn_like(activations)
    expected = GradSampleModule.GRAD_SAMPLERS[nn.GroupNorm](layer, [activations], output_grads)
    weights = torch.rand(4)
    samples = _group_norm_samples(layer, activations, output_grads)
    norms = sum(g.flatten(1).square().sum(1) for g in expected.values())
    assert torch.allclose(samples.squared_norms(), norms, rtol=1e-5)
    for parameter, total in samples.weighted_sum(weights).items():
        assert torch.allclose(total, weights @ expected[parameter], atol=1e-5)


def opacus_per_sample(model, images, labels):
    wrapped = GradSampleModule(model, loss_reduction="sum")
    nn.functional.cross_entropy(wrapped(images), labels, reduction="sum").backward()
    per_sample = {name: p.grad_sample.flatten(1).clone() for name, p in model.named_parameters()}
    wrapped._close()
    model.zero_grad(set_to_none=True)
    return per_sample


def layer_of(parameter_name):
    return parameter_name.rsplit(".", 1)[0]


def reference_norms(per_sample, layers):
    """Each sample's gradient norm over these layers, from Opacus's per-sample gradients."""
    return sum(g.square().sum(1) for name, g in per_sample.items() if layer_of(name) in layers).sqrt()


def clipped_sums(per_sample, groups):
    """The mechanism by its definition: per group, each sample's gradient scaled to norm <= C."""
    sums = {}
    for group in groups:
        scale = (group.clip / (reference_norms(per_sample, group.layers) + CLIP_STABILIZER)).clamp(max=1.0)
        sums.update({name: scale @ g for name, g in per_sample.items() if layer_of(name) in group.layers})
    return sums


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28)], ids=["digits", "fashion-mnist"])
@pytest.mark.parametrize("batch", [16, 64])
@pytest.mark.parametrize("per_layer", [False, True], ids=["flat", "per-layer"])
def test_noisy_step_on_fedmia_models_is_the_mechanism(shape, batch, per_layer):
    model = build_model("cnn", shape, 10, dp_compatible=True, seed=0)
    generator = torch.Generator().manual_seed(1)
    images, labels = torch.rand(batch, *shape, generator=generator), torch.randint(0, 10, (batch,), generator=generator)
    expected = opacus_per_sample(model, images, labels)
    sigma, expected_batch = 0.7, 0.8 * batch
    with PerSampleGradients(model) as gradients:
        for name, layer in gradients.compute(images, labels).items():
            assert torch.allclose(layer.squared_norms(), reference_norms(expected, (name,)).square(),
                                  rtol=1e-4, atol=1e-9), name
        names = list(gradients.layers)
        # Clipped at the median norm, about half the samples are scaled down in every group.
        layouts = [(name,) for name in names] if per_layer else [tuple(names)]
        groups = [ClipGroup(layers, reference_norms(expected, layers).median().item(), sigma) for layers in layouts]
        gradients.set_noisy_gradients(images, labels, groups, expected_batch, torch.Generator().manual_seed(5))
    noise_stream = torch.Generator().manual_seed(5)
    reference = clipped_sums(expected, groups)
    standardized = []
    for group in groups:
        std = sigma * group.clip
        for layer in group.layers:
            for short, parameter in model.get_submodule(layer).named_parameters(recurse=False):
                added = parameter.grad.flatten() * expected_batch - reference[f"{layer}.{short}"]
                drawn = torch.normal(0.0, std, parameter.shape, generator=noise_stream).flatten()
                assert torch.allclose(added, drawn, atol=1e-4 * group.clip), f"{layer}.{short}"
                standardized.append(added / std)
    assert torch.cat(standardized).std().item() == pytest.approx(1.0, rel=0.02)


class Block(nn.Module):
    """A conv whose output a ReLU may overwrite in place (`inplace`, switchable between passes)."""

    def __init__(self):
        super().__init__()
        self.inplace = False
        self.conv = nn.Conv2d(1, 3, 3)
        self.head = nn.Linear(3 * 4 * 4, 2)

    def forward(self, x):
        return self.head(nn.functional.relu(self.conv(x), inplace=self.inplace).flatten(1))


def test_hooks_copy_outputs_only_where_a_pass_wrote_into_them():
    torch.manual_seed(0)
    model, images, labels = Block(), torch.randn(6, 1, 6, 6), torch.tensor([0, 1, 1, 0, 1, 0])
    expected = opacus_per_sample(model, images, labels)
    conv_norms = expected["conv.weight"].square().sum(1) + expected["conv.bias"].square().sum(1)
    with PerSampleGradients(model) as gradients:
        first = gradients.compute(images, labels)["conv"].squared_norms()
        assert gradients._written == {"conv": False, "head": False}
        model.inplace = True  # the next pass hands the conv's own output on, and the ReLU writes into it
        second = gradients.compute(images, labels)["conv"].squared_norms()
        assert gradients._written == {"conv": True, "head": False}
        third = gradients.compute(images, labels)["conv"].squared_norms()
    for norms in (first, second, third):
        assert torch.allclose(norms, conv_norms, rtol=1e-4)
