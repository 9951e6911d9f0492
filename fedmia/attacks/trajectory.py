"""Trajectory attacks: membership from a target's sequence of models over federated rounds.

A federated adversary sees more than one model: the server sees every client's upload of
every round together with the global model that round started from (and the other clients'
uploads of that round); a malicious client sees each global model it receives. Training moves
a model most on the records it trained on, so each round is a before/after pair:

- `loss-trajectory`: how much each sample's loss dropped from the round's start model to the
  target's model of that round, over the rounds.
- `fedmia` ("all for one", Zhu et al. 2024): the other clients' uploads of the same round
  started from the same model without client k's data, so they are OUT models for every
  record of client k. A Gaussian fitted to a sample's logit-scaled confidence under them is
  that sample's non-member distribution; the target upload's confidence is tested against it
  (one-sided), and the rounds' log-probabilities are summed.
- `update-alignment`: the cosine between a sample's negative loss gradient at the round's start
  model (where SGD on that sample would move the weights) and the client's actual update.

Threshold: the adversary's population records are non-members of every target, so their
scores under the same trajectory are the non-member score distribution of this very target.
That needs the target, which `fit` does not have: `fit` keeps a seeded sample of the
population, and `score` scores it alongside the candidates and sets the threshold to its
`NONMEMBER_QUANTILE` quantile. `decide` works after `score`.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch
from scipy.stats import norm
from torch import nn
from torch.func import functional_call, grad, vmap

from fedmia.attacks.base import (
    PEER_UPLOADS,
    TRAJECTORY,
    AdversaryKnowledge,
    MembershipAttack,
    Parameter,
    RoundView,
    Samples,
    TargetView,
)
from fedmia.attacks.metric import log_odds, log_prob_of
from fedmia.errors import FedmiaError
from fedmia.training import predict_logits

#: Population records scored per target to calibrate the threshold: the 0.9 quantile of 1000
#: draws is within about a percentage point of the population's, and every record costs a
#: forward pass (a per-sample gradient for update-alignment) per round.
CALIBRATION_SIZE = 1000
#: A sample is flagged as a member when it scores above this fraction of known non-members: a
#: false-positive rate of 1 - 0.9 by construction, the only error rate the adversary can set
#: without members of its own to calibrate on. The median would flag half of all non-members.
NONMEMBER_QUANTILE = 0.9
#: Smallest OUT standard deviation in `fedmia`: identical other uploads (no spread) must not
#: divide by zero.
SIGMA_FLOOR = 1e-8
#: Per-sample gradient entries held at once in `update-alignment` (float32: 128 MiB).
GRADIENT_BUDGET = 2**25


def _joined(first: Samples, second: Samples) -> Samples:
    return Samples(np.concatenate([first.images, second.images]),
                   np.concatenate([first.labels, second.labels]),
                   np.concatenate([first.indices, second.indices]))


class TrajectoryAttack(MembershipAttack):
    """A score per sample from the target's rounds, thresholded at a quantile of the
    population's scores under the same rounds."""

    requires: ClassVar[frozenset[str]] = frozenset({TRAJECTORY})

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._calibration: Samples | None = None

    def fit(self, knowledge: AdversaryKnowledge) -> TrajectoryAttack:
        """Keep a seeded sample of the population; the threshold waits for a target (module
        docstring), so it stays unset until `score`."""
        population = knowledge.population
        if population is None or len(population) == 0:
            raise FedmiaError(f"attack {self.name!r} calibrates its threshold on the adversary's population, "
                              "which is empty; give the population a non-zero share of the data")
        rng = np.random.default_rng(knowledge.seed)
        size = min(len(population), CALIBRATION_SIZE)
        self._calibration = population.take(np.sort(rng.choice(len(population), size, replace=False)))
        self.threshold = None
        return self

    def score(self, target: TargetView, samples: Samples) -> np.ndarray:
        """The candidates' scores; sets the threshold from the population's under this target."""
        rounds = target.rounds
        if self._calibration is None:
            raise RuntimeError(f"attack {self.name!r} must be fit before it scores")
        if not rounds:
            raise FedmiaError(f"attack {self.name!r} needs the target's rounds, and none were kept; "
                              "keep the uploads of every round (--keep-uploads all)")
        scores = self.trajectory_scores(rounds, _joined(samples, self._calibration), target.device)
        self.threshold = float(np.quantile(scores[len(samples):], NONMEMBER_QUANTILE))
        return scores[:len(samples)]

    def decide(self, scores: np.ndarray) -> np.ndarray:
        if self.threshold is None:
            raise RuntimeError(f"attack {self.name!r} must be fit and score a target before it decides: "
                               "its threshold comes from the population under that target's rounds")
        return super().decide(scores)

    @abstractmethod
    def trajectory_scores(self, rounds: tuple[RoundView, ...], samples: Samples, device: str) -> np.ndarray:
        """One finite score per sample from the rounds, higher = more likely member."""


class _Logits:
    """Each model's logits on one image array, computed once: rounds share models (a
    malicious client's next start is the model its last round ended with)."""

    def __init__(self, images: np.ndarray, device: str) -> None:
        self.images, self.device = images, device
        self._cache: dict[int, tuple[nn.Module, np.ndarray]] = {}

    def __call__(self, model: nn.Module) -> np.ndarray:
        cached = self._cache.get(id(model))
        if cached is None or cached[0] is not model:
            cached = (model, predict_logits(model, self.images, self.device))
            self._cache[id(model)] = cached
        return cached[1]


AGGREGATES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sum": lambda per_round: per_round.sum(axis=0),
    "last": lambda per_round: per_round[-1],
    "max": lambda per_round: per_round.max(axis=0),
}


class LossTrajectoryAttack(TrajectoryAttack):
    """Per round, loss(start) - loss(model): a round the target trained on a record lowers that
    record's loss more than generalisation lowers everyone's."""

    name: ClassVar[str] = "loss-trajectory"
    parameters: ClassVar[dict[str, Parameter]] = {
        "aggregate": Parameter("sum", choices=AGGREGATES,
                               help="how the rounds' loss drops combine: sum, last "
                                    "(the last round only) or max"),
    }

    def trajectory_scores(self, rounds: tuple[RoundView, ...], samples: Samples, device: str) -> np.ndarray:
        logits = _Logits(samples.images, device)
        drops = np.stack([log_prob_of(logits(view.model), samples.labels)
                          - log_prob_of(logits(view.start), samples.labels) for view in rounds])
        return AGGREGATES[self.params["aggregate"]](drops)


def out_gaussian_log_cdf(target: np.ndarray, others: np.ndarray, fixed_variance: bool) -> np.ndarray:
    """log P[Z <= target] per sample, Z the Gaussian fitted to that sample's OUT values
    (`others`, one row per OUT model): its own mean, and its own unbiased variance or the
    mean of those over the samples. Log-CDF, not the CDF, so members far in the upper tail
    still differ from each other and rounds add up."""
    mean = others.mean(axis=0)
    variance = others.var(axis=0, ddof=1)
    if fixed_variance:
        variance = np.full_like(variance, variance.mean())
    return norm.logcdf((target - mean) / np.maximum(np.sqrt(variance), SIGMA_FLOOR))


class FedMiaAttack(TrajectoryAttack):
    """FedMIA (Zhu et al. 2024): the other clients' uploads of a round are OUT models for the
    target client's records; a one-sided Gaussian test of the target upload's logit-scaled
    confidence log(p_y / (1 - p_y)) per round, log-probabilities summed over rounds."""

    name: ClassVar[str] = "fedmia"
    requires: ClassVar[frozenset[str]] = frozenset({TRAJECTORY, PEER_UPLOADS})
    parameters: ClassVar[dict[str, Parameter]] = {
        "fixed_variance": Parameter(False, help="one OUT variance pooled over the samples instead of "
                                                "one per sample (steadier with few other clients)"),
    }

    def trajectory_scores(self, rounds: tuple[RoundView, ...], samples: Samples, device: str) -> np.ndarray:
        usable = [view for view in rounds if len(view.others) >= 2]
        if not usable:
            raise FedmiaError(f"attack {self.name!r} needs at least 2 other clients' uploads of the target's "
                              "rounds; keep every upload (--keep-uploads all) and train more than 2 clients "
                              "per round (--clients, --fraction)")
        logits = _Logits(samples.images, device)

        def confidence(model: nn.Module) -> np.ndarray:
            return log_odds(logits(model), samples.labels)

        def round_score(view: RoundView) -> np.ndarray:
            others = np.stack([confidence(other) for other in view.others])
            return out_gaussian_log_cdf(confidence(view.model), others, self.params["fixed_variance"])

        return np.sum([round_score(view) for view in usable], axis=0)


def update_alignment(start: nn.Module, model: nn.Module, samples: Samples, device: str,
                     batch_size: int | None = None) -> np.ndarray:
    """Per sample, cos(-grad of its loss at `start`, `model` - `start`) over the parameters
    (buffers such as BatchNorm statistics are not trained by gradients). 0 where the update
    or the gradient is zero: no direction to agree with. Per-sample gradients come in batches
    of `batch_size` (default: as many as GRADIENT_BUDGET holds)."""
    start.to(device).eval()
    params = {name: p.detach() for name, p in start.named_parameters()}
    ends = dict(model.named_parameters())
    update = {name: ends[name].detach().to(device) - p for name, p in params.items()}
    buffers = {name: b.detach() for name, b in start.named_buffers()}

    def loss(weights: dict[str, torch.Tensor], image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        logits = functional_call(start, (weights, buffers), (image.unsqueeze(0),))
        return nn.functional.cross_entropy(logits, label.unsqueeze(0))

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))
    size = sum(p.numel() for p in params.values())
    batch_size = batch_size or max(1, GRADIENT_BUDGET // size)
    images = torch.as_tensor(samples.images, device=device)
    labels = torch.as_tensor(samples.labels, device=device)
    dots, norms = [], []
    for begin in range(0, len(samples), batch_size):
        grads = per_sample(params, images[begin:begin + batch_size], labels[begin:begin + batch_size])
        dots.append(sum((grads[n].flatten(1).double() @ update[n].flatten().double()) for n in params))
        norms.append(sum(grads[n].flatten(1).double().pow(2).sum(1) for n in params).sqrt())
    update_norm = float(sum(u.double().pow(2).sum() for u in update.values()).sqrt())
    dot, grad_norm = torch.cat(dots).cpu().numpy(), torch.cat(norms).cpu().numpy()
    denominator = grad_norm * update_norm
    return np.divide(-dot, denominator, out=np.zeros_like(dot), where=denominator > 0)


class UpdateAlignmentAttack(TrajectoryAttack):
    """Per round, the cosine between a sample's descent direction at the round's start model
    and the client's update, averaged over rounds: a client's update is built from its own
    records' gradients, so it points where theirs do."""

    name: ClassVar[str] = "update-alignment"

    def trajectory_scores(self, rounds: tuple[RoundView, ...], samples: Samples, device: str) -> np.ndarray:
        return np.mean([update_alignment(view.start, view.model, samples, device) for view in rounds], axis=0)
