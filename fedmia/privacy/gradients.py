"""Per-sample clipped, noised gradients: the Gaussian mechanism of DP-SGD, flat or per layer.

Layers are clipped in groups: a sample's gradient over a group's layers is scaled to norm at most
the group's C, and the group's summed gradient gets Gaussian noise of std sigma C. Flat DP-SGD is
one group holding every layer; layered DP is one group per layer.

Why not Opacus's `GradSampleModule` and `DPOptimizer`: on fedmia's small models every one of
its grad-sample modes (hooks, functorch's vmap, expanded weights, ghost clipping) makes a DP step
2-7x a plain one (`benchmarks/bench_dp.py`), and the optimizer adds one noise std to every
parameter, while layered DP needs one per layer. Here, forward hooks record each parametrized
layer's input and output, and one `torch.autograd.grad` of the summed loss with respect to those
outputs gives every layer's per-sample output gradients (no parameter gradient is computed on
the way). Per-sample parameter gradients then come from
- `nn.Linear` on (batch, features) inputs: kept factored, never materialized (sample i's weight
  gradient is the outer product b_i a_i^T, so its squared norm is |a_i|^2 |b_i|^2 and a weighted
  sum over samples is (w * b)^T a: ghost clipping without the second backward pass);
- `nn.Conv2d`: materialized, because its ghost norm sums over pairs of output positions (28x28:
  600,000 pairs a sample), far more work than the gradient itself. Per sample, input patches
  times output gradients in one batched product; or, on CPU with 8-32 input channels on large
  images, oneDNN's weight gradient of one convolution whose groups are the samples;
- `nn.GroupNorm`: the normalized input times the output gradients, summed over positions;
- every other layer type: Opacus's registered per-sample gradient samplers.
Tests check the result against Opacus's `GradSampleModule` and its optimizer's clipping.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from opacus.grad_sample import GradSampleModule
from torch import nn

from fedmia.errors import FedmiaError

#: Clipping scales a sample by min(1, C / (norm + CLIP_STABILIZER)), as Opacus does.
CLIP_STABILIZER = 1e-6


#: Per-sample losses, shape (batch,), from logits and targets.
PerSampleLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ClipGroup:
    """Layers clipped together to `clip` per sample, noised with std `noise_multiplier * clip`."""

    layers: tuple[str, ...]
    clip: float
    noise_multiplier: float


class LayerSamples(Protocol):
    """One layer's per-sample gradients for one batch."""

    def squared_norms(self) -> torch.Tensor:
        """Each sample's squared gradient norm over the layer's parameters, shape (batch,)."""

    def weighted_sum(self, weights: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
        """sum_i weights[i] * (sample i's gradient), per parameter."""


def _squared_row_norms(rows: torch.Tensor) -> torch.Tensor:
    """Each sample's squared norm, without the squared copy (a fresh 1 MB tensor per conv layer
    and step costs more in page faults than the sum itself)."""
    return torch.linalg.vector_norm(rows.flatten(1), dim=1).square()


class FactoredLinear:
    """Per-sample gradients of a Linear layer on (batch, features) inputs, in factored form."""

    def __init__(self, layer: nn.Linear, activations: torch.Tensor, backprops: torch.Tensor) -> None:
        self.layer, self.activations, self.backprops = layer, activations, backprops

    def squared_norms(self) -> torch.Tensor:
        output_norms = _squared_row_norms(self.backprops)
        total = torch.zeros_like(output_norms)
        if self.layer.weight.requires_grad:
            total = total + output_norms * _squared_row_norms(self.activations)
        if self.layer.bias is not None and self.layer.bias.requires_grad:
            total = total + output_norms
        return total

    def weighted_sum(self, weights: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
        scaled = self.backprops * weights[:, None]
        sums = {}
        if self.layer.weight.requires_grad:
            sums[self.layer.weight] = scaled.T @ self.activations
        if self.layer.bias is not None and self.layer.bias.requires_grad:
            sums[self.layer.bias] = scaled.sum(0)
        return sums


class MaterializedSamples:
    """Per-sample gradients held as (batch, *parameter shape) tensors."""

    def __init__(self, per_sample: dict[nn.Parameter, torch.Tensor]) -> None:
        self.per_sample = {p: g for p, g in per_sample.items() if p.requires_grad}

    def squared_norms(self) -> torch.Tensor:
        return sum(_squared_row_norms(g) for g in self.per_sample.values())

    def weighted_sum(self, weights: torch.Tensor) -> dict[nn.Parameter, torch.Tensor]:
        return {p: (weights @ g.flatten(1)).view(p.shape) for p, g in self.per_sample.items()}


def _unfoldable(layer: nn.Module) -> bool:
    return (type(layer) is nn.Conv2d and layer.groups == 1 and layer.padding_mode == "zeros"
            and not isinstance(layer.padding, str))


#: Output positions per channel from which the copies below beat `nn.functional.unfold` (im2col)
#: on CPU: measured at 4x4 (digits' second conv), where im2col wins, and 14x14, 28x28, where it
#: loses by 2-3x.
LARGE_IMAGE = 64


def _patches(layer: nn.Conv2d, activations: torch.Tensor) -> torch.Tensor:
    """What `nn.functional.unfold` returns, (batch, in_channels x kernel area, positions), as
    one copy of a strided view of the padded input."""
    (pad_h, pad_w), (stride_h, stride_w), (dil_h, dil_w) = layer.padding, layer.stride, layer.dilation
    kernel_h, kernel_w = layer.kernel_size
    padded = nn.functional.pad(activations, (pad_w, pad_w, pad_h, pad_h))
    batch, channels, height, width = padded.shape
    out_h = (height - dil_h * (kernel_h - 1) - 1) // stride_h + 1
    out_w = (width - dil_w * (kernel_w - 1) - 1) // stride_w + 1
    rows, cols = padded.stride(2), padded.stride(3)
    windows = padded.as_strided((batch, channels, kernel_h, kernel_w, out_h, out_w),
                                (padded.stride(0), padded.stride(1), dil_h * rows, dil_w * cols,
                                 stride_h * rows, stride_w * cols))
    return windows.reshape(batch, channels * kernel_h * kernel_w, out_h * out_w)


def _grouped_kernel_is_faster(layer: nn.Conv2d, activations: torch.Tensor, positions: int) -> bool:
    """On CPU (oneDNN), the grouped weight-gradient kernel beats patches times output gradients
    on large images with 8-32 input channels (fedmia's cnn: 16; 2x at 28x28, batch 64); with
    fewer channels patches are cheap, and with 64 it can be 3-6x slower."""
    return activations.device.type == "cpu" and positions >= LARGE_IMAGE and 8 <= layer.in_channels <= 32


def _conv2d_weight_samples(layer: nn.Conv2d, activations: torch.Tensor, backprops: torch.Tensor) -> torch.Tensor:
    """Per-sample weight gradients, (batch, *weight shape): per sample, output gradients times
    input patches; or, where faster, the weight gradient of one convolution over the whole
    batch stacked as channels with one group per sample (a group's gradient is its sample's)."""
    batch, positions = len(backprops), math.prod(backprops.shape[2:])
    if _grouped_kernel_is_faster(layer, activations, positions):
        weight = nn.grad.conv2d_weight(
            activations.reshape(1, -1, *activations.shape[2:]), (batch * layer.out_channels, *layer.weight.shape[1:]),
            backprops.reshape(1, -1, *backprops.shape[2:]), layer.stride, layer.padding, layer.dilation, groups=batch)
        return weight.view(batch, *layer.weight.shape)
    columns = (_patches(layer, activations) if positions >= LARGE_IMAGE else nn.functional.unfold(
        activations, layer.kernel_size, layer.dilation, layer.padding, layer.stride))
    return torch.bmm(backprops.flatten(2), columns.transpose(1, 2)).view(batch, *layer.weight.shape)


def _conv2d_samples(layer: nn.Conv2d, activations: torch.Tensor, backprops: torch.Tensor) -> MaterializedSamples:
    per_sample = {layer.weight: _conv2d_weight_samples(layer, activations, backprops)}
    if layer.bias is not None:
        per_sample[layer.bias] = backprops.sum((2, 3))
    return MaterializedSamples(per_sample)


def _group_norm_samples(layer: nn.GroupNorm, activations: torch.Tensor, backprops: torch.Tensor) -> MaterializedSamples:
    """Opacus's rule (normalized input times output gradients, summed over positions) with one
    product tensor fewer, which on 28x28 inputs saves a sixth of its time. A GroupNorm with
    parameters is affine, so it has both."""
    batch, channels = backprops.shape[:2]
    normalized = nn.functional.group_norm(activations, layer.num_groups, eps=layer.eps)
    return MaterializedSamples({layer.weight: normalized.mul_(backprops).reshape(batch, channels, -1).sum(2),
                                layer.bias: backprops.reshape(batch, channels, -1).sum(2)})


def layer_samples(layer: nn.Module, activations: torch.Tensor, backprops: torch.Tensor) -> LayerSamples:
    """The cheapest exact per-sample form for this layer type (see the module docstring)."""
    if type(layer) is nn.Linear and activations.dim() == 2:
        return FactoredLinear(layer, activations, backprops)
    if _unfoldable(layer):
        return _conv2d_samples(layer, activations, backprops)
    if type(layer) is nn.GroupNorm:
        return _group_norm_samples(layer, activations, backprops)
    return MaterializedSamples(GradSampleModule.GRAD_SAMPLERS[type(layer)](layer, [activations], backprops))


def parametrized_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Every module that directly owns a trainable parameter, by name; each must have a
    per-sample gradient rule."""
    layers = {name: module for name, module in model.named_modules()
              if any(p.requires_grad for p in module.parameters(recurse=False))}
    for name, module in layers.items():
        if type(module) not in GradSampleModule.GRAD_SAMPLERS:
            raise FedmiaError(f"layer {name!r} ({type(module).__name__}) has no per-sample gradient "
                              "rule; DP training needs the DP-compatible model (build_model(..., "
                              "dp_compatible=True)) built from layers Opacus supports")
    return layers


@dataclass(frozen=True)
class _Call:
    """One layer's run in a forward pass: its input, its output (whose gradient `compute` takes),
    and the tensor the rest of the model got, with that tensor's version when handed on."""

    name: str
    activations: torch.Tensor
    output: torch.Tensor
    passed_on: torch.Tensor
    version: int

    @property
    def written_after(self) -> bool:
        """Whether a later op wrote into the handed-on tensor (in place ops bump its version)."""
        return self.passed_on._version != self.version


class PerSampleGradients:
    """Per-sample gradients of a model's parametrized layers, and the noisy step built on them.

    Hooks stay on the model until `close` (or the end of a `with` block); they record only
    inside `compute`, so the model can be used normally in between.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.layers = parametrized_layers(model)
        self.trainable = {name: [p for p in layer.parameters(recurse=False) if p.requires_grad]
                           for name, layer in self.layers.items()}
        self._names = {layer: name for name, layer in self.layers.items()}
        self._calls: list[_Call] | None = None
        self._written: dict[str, bool] = {}
        self._handles = [layer.register_forward_hook(self._record) for layer in self.layers.values()]

    def __enter__(self) -> PerSampleGradients:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _record(self, layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor | None:
        if self._calls is None:
            return None
        name = self._names[layer]
        # An in-place op after the layer (ReLU(inplace=True)) would change the very tensor whose
        # gradient `compute` asks for, so the rest of the model gets a copy, until a pass has
        # shown that nothing writes into this layer's output (saves 10 MB of copies a step on
        # the Fashion-MNIST cnn at batch 64).
        passed_on = output if self._written.get(name) is False else output.clone()
        self._calls.append(_Call(name, inputs[0].detach(), output, passed_on, passed_on._version))
        return passed_on

    def compute(self, inputs: torch.Tensor, labels: torch.Tensor,
                loss_fn: PerSampleLoss | None = None) -> dict[str, LayerSamples]:
        """Per-sample gradients of the loss (default: cross-entropy against `labels`, which may
        also be probability vectors), per layer the batch reached."""
        self._calls = []
        try:
            logits = self.model(inputs)
            loss = (nn.functional.cross_entropy(logits, labels, reduction="sum") if loss_fn is None
                    else loss_fn(logits, labels).sum())
        finally:
            calls, self._calls = self._calls, None
        names = [call.name for call in calls]
        if len(set(names)) != len(names):
            raise FedmiaError("a layer runs more than once per forward pass, which per-sample "
                              "clipping does not support; use a model without shared layers")
        self._written.update((call.name, call.written_after) for call in calls)
        if any(call.written_after and call.passed_on is call.output for call in calls):
            return self.compute(inputs, labels, loss_fn)  # newly written in place: again, with copies
        backprops = torch.autograd.grad(loss, [call.output for call in calls], allow_unused=True)
        return {call.name: layer_samples(self.layers[call.name], call.activations, backprop)
                for call, backprop in zip(calls, backprops) if backprop is not None}

    def check_groups(self, groups: Sequence[ClipGroup]) -> None:
        """Every layer in exactly one group, or some parameter would go unclipped or unnoised."""
        grouped = sorted(name for group in groups for name in group.layers)
        if grouped != sorted(self.layers):
            raise ValueError(f"clip groups {grouped} must cover each layer of {sorted(self.layers)} once")

    def set_noisy_gradients(self, inputs: torch.Tensor, labels: torch.Tensor, groups: Sequence[ClipGroup],
                            expected_batch: float, generator: torch.Generator,
                            loss_fn: PerSampleLoss | None = None) -> None:
        """Set every trainable parameter's `.grad` to (clipped sum + noise) / expected batch."""
        samples = self.compute(inputs, labels, loss_fn) if len(labels) else {}
        for group in groups:
            summed = _clipped_sum([samples[name] for name in group.layers if name in samples], group.clip)
            std = group.noise_multiplier * group.clip
            for parameter in (p for name in group.layers for p in self.trainable[name]):
                noise = torch.normal(0.0, std, parameter.shape, generator=generator, device=parameter.device)
                if parameter in summed:
                    noise.add_(summed[parameter])
                parameter.grad = noise.div_(expected_batch)


def _clipped_sum(samples: Sequence[LayerSamples], clip: float) -> dict[nn.Parameter, torch.Tensor]:
    """Sum over samples of each sample's gradient over these layers, scaled to norm <= clip."""
    if not samples:
        return {}
    norms = sum(layer.squared_norms() for layer in samples).sqrt()
    weights = (clip / (norms + CLIP_STABILIZER)).clamp(max=1.0)
    return {parameter: total for layer in samples for parameter, total in layer.weighted_sum(weights).items()}
