"""Labels of a client's records, read off the last layer of its update before any image is
reconstructed (iDLG, Zhao et al. 2020; batch counts in the spirit of Wainakh et al. 2022).

With cross-entropy, the gradient of the last linear layer's bias is, per class c,
    mean_i softmax_c(x_i) - (records labelled c) / n,
so a single record's label is the one class with a negative entry (iDLG; without a bias, the
row of the weight gradient with a negative sum: the features after a ReLU are non-negative).
For a batch, the count of class c is n * (mean softmax_c - bias gradient_c); the mean softmax
of the real records is unknown, and is estimated by the model's mean softmax on random images
the size of the batch (in train mode, as on the client). Every class with a negative entry gets
at least one record, the rest go by the largest estimated counts.

How exact: for one record on FedSGD the label is exact. For a FedSGD batch the counts are exact
as long as the mean-softmax estimate is within 1/(2n) of the real one per class, which holds for
untrained models (digits `cnn`: exact in 20 of 20 random batches of 4, 8 and 16, 19 of 20 of
32); it fails for a confident trained model, whose near-zero gradients carry little count
information (after 3 epochs on 300 records: 2 of 20 batches of 4 exact). A FedAvg update (several local steps) is turned into an average
gradient (`estimated_gradient`): the softmax drifts over the local steps and momentum weighs
the steps unevenly, so counts are approximate there.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from fedmia.errors import FedmiaError
from fedmia.inversion.base import ClientUpdate


def momentum_scale(steps: int, momentum: float) -> float:
    """How many learning-rate steps `steps` SGD steps with momentum take along a constant
    gradient: the k-th step moves by lr * (1 + m + ... + m^(k-1))."""
    return float(sum(sum(momentum**j for j in range(k)) for k in range(1, steps + 1)))


def estimated_gradient(update: ClientUpdate) -> list[torch.Tensor]:
    """The client's gradient per parameter (`sent.named_parameters()` order), without weight
    decay: exact for one local step (SGD with momentum's first step is the plain gradient),
    the average over the steps if the gradient had stayed constant for several."""
    plan = update.plan
    scale = plan.lr * momentum_scale(update.steps, plan.momentum)
    sent = [parameter.detach() for parameter in update.sent.parameters()]
    return [change / scale - plan.weight_decay * weight
            for change, weight in zip(update.parameter_change(), sent)]


def final_linear(model: nn.Module, num_classes: int) -> nn.Linear:
    """The last linear layer with one output per class."""
    layers = [module for module in model.modules()
              if isinstance(module, nn.Linear) and module.out_features == num_classes]
    if not layers:
        raise FedmiaError(f"label recovery needs a final linear layer with {num_classes} outputs, "
                          f"and {type(model).__name__} has none; use a model that ends in one")
    return layers[-1]


def class_signal(update: ClientUpdate) -> torch.Tensor:
    """Per class, the last layer's gradient: the bias entry, or the weight row's sum without a
    bias. Negative where the class is in the client's records."""
    head = final_linear(update.sent, update.num_classes)
    gradient = dict(zip((id(p) for p in update.sent.parameters()), estimated_gradient(update)))
    if head.bias is not None:
        return gradient[id(head.bias)]
    return gradient[id(head.weight)].sum(dim=1)


def single_label(update: ClientUpdate) -> int:
    """iDLG: the label of a client's single record, the class with the most negative entry."""
    return int(class_signal(update).argmin())


def probe(model: nn.Module, num_classes: int, input_shape: tuple[int, ...], count: int,
          seed: int) -> tuple[torch.Tensor, float]:
    """The model's mean softmax on `count` uniform random images, and the mean sum of the
    features entering the last layer; in train mode (a BatchNorm normalizes by the batch, as on
    the client), on a copy so `model` keeps its statistics."""
    copied = copy.deepcopy(model).train()
    features: list[torch.Tensor] = []
    head = final_linear(copied, num_classes)
    hook = head.register_forward_hook(lambda _, inputs, __: features.append(inputs[0]))
    device = next(copied.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand((max(count, 2), *input_shape), generator=generator).to(device)
    with torch.no_grad():
        softmax = copied(images).softmax(dim=1).mean(dim=0).double().cpu()
    hook.remove()
    return softmax, float(features[0].sum(dim=1).mean())


def batch_labels(update: ClientUpdate, seed: int) -> np.ndarray:
    """`update.num_examples` labels, sorted: per-class counts from the last layer's gradient
    (see the module docstring), at least one for each class with a negative entry."""
    n = update.num_examples
    signal = class_signal(update).double().cpu()
    softmax, feature_sum = probe(update.sent, update.num_classes, update.input_shape, n, seed)
    if final_linear(update.sent, update.num_classes).bias is None:
        # A weight row's sum is the bias entry weighted by each record's feature sum.
        signal = signal / max(feature_sum, 1e-12)
    estimate = n * (softmax - signal)
    counts = torch.zeros(update.num_classes, dtype=torch.long)
    counts[torch.argsort(signal)[: min(n, int((signal < 0).sum()))]] = 1
    while int(counts.sum()) < n:
        counts[int(torch.argmax(estimate - counts))] += 1
    return np.repeat(np.arange(update.num_classes), counts.numpy()).astype(np.int64)


def recover_labels(update: ClientUpdate, seed: int) -> np.ndarray:
    """One label per record: iDLG's exact rule for one record, batch counts otherwise."""
    if update.num_examples == 1:
        return np.array([single_label(update)], dtype=np.int64)
    return batch_labels(update, seed)
