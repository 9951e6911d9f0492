"""White-box attacks: signals read off the target's weights, not just its outputs.

Gradient norm: training drives the loss gradient of every training record towards zero, so a
member's per-sample gradient is smaller than a non-member's. Nasr et al. (S&P 2019,
"Comprehensive Privacy Analysis of Deep Learning"): an attack network that learns membership
from the loss, the label, the model's output and the last layer's loss gradient together,
trained on reference models whose membership the adversary knows.

Per-sample gradients come from torch.func (functional_call + vmap + grad) in the model's eval
mode: BatchNorm then normalises with its running statistics, so a sample's gradient does not
depend on which other samples share its batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from scipy.special import softmax
from torch import nn
from torch.func import functional_call, grad, vmap

from fedmia.attacks.base import (
    WHITE_BOX,
    AdversaryKnowledge,
    MembershipAttack,
    Parameter,
    ReferenceRequest,
    Samples,
    TargetView,
    best_threshold,
)
from fedmia.attacks.metric import log_prob_of
from fedmia.errors import FedmiaError
from fedmia.training import predict_logits

#: Bytes of per-sample gradients held at once: bounds the vmap batch for large models
#: (ResNet-18's 11M parameters take 45 MB per sample).
GRADIENT_BYTES = 2**28
#: Most samples per vmap batch, however small the gradients.
MAX_BATCH = 256
#: Most members, and as many non-members, of each reference model that calibration reads.
MAX_PER_CLASS = 2000
#: `layers` values of the gradient-norm attack.
LAYER_CHOICES = ("all", "last")


def last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """The model's classification layer: its last nn.Linear, with its qualified name."""
    linears = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise FedmiaError(f"model {type(model).__name__} has no linear layer for a last-layer "
                          "white-box attack; use gradient-norm:layers=all or a model with a linear head")
    return linears[-1]


def gradient_names(model: nn.Module, layers: str) -> list[str]:
    """Qualified names of the parameters whose gradient an attack reads."""
    if layers == "all":
        return [name for name, _ in model.named_parameters()]
    prefix, layer = last_linear(model)
    return [f"{prefix}.{name}" for name, _ in layer.named_parameters()]


def per_sample_gradients(model: nn.Module, images: np.ndarray, labels: np.ndarray,
                         names: list[str], device: str) -> Iterator[dict[str, torch.Tensor]]:
    """Batches of per-sample cross-entropy gradients w.r.t. the named parameters, each tensor
    shaped (batch, *parameter shape), at the model's weights in eval mode."""
    model.to(device).eval()
    fixed = {name: tensor.detach() for name, tensor in (*model.named_parameters(), *model.named_buffers())}
    selected = {name: fixed[name] for name in names}

    def sample_loss(params: dict[str, torch.Tensor], image: torch.Tensor,
                    label: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, {**fixed, **params}, (image.unsqueeze(0),))
        return nn.functional.cross_entropy(logits, label.unsqueeze(0))

    batched = vmap(grad(sample_loss), in_dims=(None, 0, 0))
    per_sample_bytes = sum(t.numel() * t.element_size() for t in selected.values())
    batch_size = int(np.clip(GRADIENT_BYTES // max(per_sample_bytes, 1), 1, MAX_BATCH))
    for start in range(0, len(labels), batch_size):
        inputs = torch.as_tensor(images[start : start + batch_size], device=device)
        targets = torch.as_tensor(labels[start : start + batch_size], device=device)
        yield batched(selected, inputs, targets)


def gradient_norms(model: nn.Module, samples: Samples, layers: str, device: str) -> np.ndarray:
    """Per-sample L2 norm of the loss gradient over the chosen parameters, in float64."""
    names = gradient_names(model, layers)
    norms = [
        torch.sqrt(sum(g.double().flatten(1).square().sum(1) for g in batch.values())).cpu().numpy()
        for batch in per_sample_gradients(model, samples.images, samples.labels, names, device)
    ]
    return np.concatenate(norms) if norms else np.zeros(0)


def negative_log_norm(norms: np.ndarray) -> np.ndarray:
    """-log ||g||, finite also where a perfectly fitted sample's gradient underflows to 0."""
    return -np.log(np.maximum(norms, np.finfo(np.float64).tiny))


@dataclass(frozen=True)
class Calibration:
    """Population records one reference model did (`membership` True) and did not train on."""

    model: nn.Module
    samples: Samples
    membership: np.ndarray


def calibration_sets(knowledge: AdversaryKnowledge, count: int, attack: str) -> list[Calibration]:
    """Per reference model, a balanced draw of its population members and non-members, up to
    MAX_PER_CLASS each (by the knowledge's seed): per-sample gradients of a whole large
    population would cost more than a threshold or a small attack network needs, and balance
    makes members and non-members count equally."""
    population = knowledge.population
    if population is None or len(knowledge.references) < count:
        raise FedmiaError(f"attack {attack!r} needs {count} reference model(s) and a population pool; "
                          "give the adversary a population split")
    rng = np.random.default_rng(knowledge.seed)
    sets = []
    for reference in knowledge.references[:count]:
        membership = reference.trained_on(population.indices)
        size = min(int(membership.sum()), int((~membership).sum()), MAX_PER_CLASS)
        if size == 0:
            raise FedmiaError(f"attack {attack!r} needs reference models trained on part of the "
                              "population (both members and non-members); enlarge the population")
        rows = np.sort(np.concatenate([rng.choice(np.flatnonzero(side), size, replace=False)
                                       for side in (membership, ~membership)]))
        sets.append(Calibration(reference.model, population.take(rows), membership[rows]))
    return sets


class GradientNormAttack(MembershipAttack):
    """-log of the per-sample gradient norm, thresholded where it best separates one offline
    reference model's members from its non-members."""

    name: ClassVar[str] = "gradient-norm"
    requires: ClassVar[frozenset[str]] = frozenset({WHITE_BOX})
    parameters: ClassVar[dict[str, Parameter]] = {
        "layers": Parameter("all", choices=LAYER_CHOICES,
                            help="gradient w.r.t. all parameters (all) or the last linear "
                                 "layer (last)"),
    }

    def references_needed(self) -> ReferenceRequest:
        return ReferenceRequest(1, online=False)

    def signal(self, model: nn.Module, samples: Samples, device: str) -> np.ndarray:
        return negative_log_norm(gradient_norms(model, samples, self.params["layers"], device))

    def fit(self, knowledge: AdversaryKnowledge) -> GradientNormAttack:
        (calibration,) = calibration_sets(knowledge, 1, self.name)
        scores = self.signal(calibration.model, calibration.samples, knowledge.plan.device)
        self.threshold = best_threshold(scores, calibration.membership)
        return self

    def score(self, target: TargetView, samples: Samples) -> np.ndarray:
        return self.signal(target.model, samples, target.device)


def last_layer_gradients(model: nn.Module, samples: Samples, device: str) -> np.ndarray:
    """Per-sample loss gradient of the last linear layer, one row per output unit: (n, C, H)
    for its weight, with the bias gradient appended as column H where it has a bias."""
    prefix, _ = last_linear(model)
    names = gradient_names(model, "last")
    blocks = []
    for batch in per_sample_gradients(model, samples.images, samples.labels, names, device):
        weight = batch[f"{prefix}.weight"]
        bias = batch.get(f"{prefix}.bias")
        rows = weight if bias is None else torch.cat([weight, bias.unsqueeze(-1)], dim=-1)
        blocks.append(rows.cpu().numpy())
    return np.concatenate(blocks)


def nasr_features(model: nn.Module, samples: Samples,
                  device: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(last-layer gradient rows, sorted posteriors, [log loss, one-hot label]) per sample.

    Each gradient row is sorted too: a row is (p_c - y_c) times the penultimate activations,
    whose units mean different things in every independently trained model, so only their
    sorted values carry over from the reference models to the target. The loss enters as its
    log, since a member's loss sits orders of magnitude below a non-member's."""
    logits = predict_logits(model, samples.images, device)
    rows = -np.sort(-last_layer_gradients(model, samples, device), axis=2)
    posteriors = -np.sort(-softmax(logits, axis=1), axis=1)
    log_loss = np.log(np.maximum(-log_prob_of(logits, samples.labels), np.finfo(np.float64).tiny))
    one_hot = np.eye(logits.shape[1])[samples.labels]
    return rows, posteriors, np.column_stack([log_loss, one_hot])


#: Features each output unit's gradient row is reduced to (the paper's convolution whose
#: kernel spans one unit's incoming weights).
ROW_FEATURES = 8
#: Samples per step of attack-network training.
ATTACK_BATCH = 128


class NasrNetwork(nn.Module):
    """One branch per feature type, concatenated into an MLP that outputs the member logit."""

    def __init__(self, classes: int, row_width: int, hidden: int) -> None:
        super().__init__()
        self.gradient = nn.Sequential(
            nn.Linear(row_width, ROW_FEATURES), nn.ReLU(), nn.Flatten(),
            nn.Linear(classes * ROW_FEATURES, hidden), nn.ReLU(),
        )
        self.output = nn.Sequential(nn.Linear(classes, hidden), nn.ReLU())
        self.loss_label = nn.Sequential(nn.Linear(classes + 1, hidden), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(3 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, gradient: torch.Tensor, output: torch.Tensor, loss_label: torch.Tensor) -> torch.Tensor:
        branches = (self.gradient(gradient), self.output(output), self.loss_label(loss_label))
        return self.head(torch.cat(branches, dim=1)).squeeze(1)


class Standardizer:
    """Per-feature mean and spread of the attack network's training features: raw gradients
    and losses span orders of magnitude that would stall its training."""

    def __init__(self, blocks: tuple[np.ndarray, ...]) -> None:
        self.means = [block.mean(axis=0) for block in blocks]
        self.scales = [np.maximum(block.std(axis=0), 1e-12) for block in blocks]

    def __call__(self, blocks: tuple[np.ndarray, ...]) -> tuple[torch.Tensor, ...]:
        return tuple(torch.as_tensor((block - mean) / scale, dtype=torch.float32)
                     for block, mean, scale in zip(blocks, self.means, self.scales))


class NasrAttack(MembershipAttack):
    """Nasr et al.'s white-box attack network, trained on offline reference models' features
    of the population with their known membership; the score is its member logit."""

    name: ClassVar[str] = "nasr"
    requires: ClassVar[frozenset[str]] = frozenset({WHITE_BOX})
    parameters: ClassVar[dict[str, Parameter]] = {
        "refs": Parameter(2, low=1, help="reference models the attack network trains on"),
        "epochs": Parameter(30, low=1, help="training epochs of the attack network"),
        "hidden": Parameter(64, low=1, help="width of the attack network's layers"),
    }

    def __init__(self, **params: object) -> None:
        super().__init__(**params)
        self.standardize: Standardizer | None = None
        self.network: NasrNetwork | None = None

    def references_needed(self) -> ReferenceRequest:
        return ReferenceRequest(self.params["refs"], online=False)

    def fit(self, knowledge: AdversaryKnowledge) -> NasrAttack:
        calibrations = calibration_sets(knowledge, self.params["refs"], self.name)
        features = [nasr_features(c.model, c.samples, knowledge.plan.device) for c in calibrations]
        blocks = tuple(np.concatenate(block) for block in zip(*features))
        membership = np.concatenate([c.membership for c in calibrations])
        self.standardize = Standardizer(blocks)
        inputs = self.standardize(blocks)
        self.network = self._train(inputs, torch.as_tensor(membership, dtype=torch.float32), knowledge.seed)
        self.threshold = best_threshold(self._logits(inputs), membership)
        return self

    def _train(self, inputs: tuple[torch.Tensor, ...], membership: torch.Tensor, seed: int) -> NasrNetwork:
        """Adam on the logistic loss over minibatches, seeded for identical networks."""
        gradient, output, _ = inputs
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            network = NasrNetwork(output.shape[1], gradient.shape[2], self.params["hidden"])
        loss_fn = nn.BCEWithLogitsLoss()
        optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
        generator = torch.Generator().manual_seed(seed)
        network.train()
        for _ in range(self.params["epochs"]):
            for batch in torch.randperm(len(membership), generator=generator).split(ATTACK_BATCH):
                optimizer.zero_grad(set_to_none=True)
                loss_fn(network(*(block[batch] for block in inputs)), membership[batch]).backward()
                optimizer.step()
        return network.eval()

    @torch.no_grad()
    def _logits(self, inputs: tuple[torch.Tensor, ...]) -> np.ndarray:
        return self.network(*inputs).double().numpy()

    def score(self, target: TargetView, samples: Samples) -> np.ndarray:
        if self.network is None or self.standardize is None:
            raise RuntimeError(f"attack {self.name!r} must be fit before it scores")
        return self._logits(self.standardize(nasr_features(target.model, samples, target.device)))
