"""Gradient inversion: the server optimizes dummy records until training on them reproduces the
update a client sent back.

Three attacks share one mechanism (`ClientSimulation`):
- `dlg` (Zhu et al. 2019): dummy images and soft labels, Euclidean distance, L-BFGS (exact on
  smooth networks like the paper's sigmoid ones; on the default ReLU/BatchNorm `cnn` it stalls
  near the mean-image baseline, and Adam did no better);
- `idlg` (Zhao et al. 2020): labels read off the last layer first (`fedmia.inversion.labels`),
  then the images alone as in DLG;
- `inverting-gradients` (Geiping et al. 2020): cosine distance plus a total-variation prior,
  Adam on the gradient's sign with step decay, images projected into [0, 1] after every step,
  restarts kept by their own objective (never by the ground truth).

What is matched depends on the client. A FedSGD client (one local step) sent its gradient back
in disguise: change / lr minus weight decay times the weights is exactly the gradient (SGD with
momentum's first step is the plain gradient), and the dummy batch's gradient is matched to it.
A FedAvg client took several steps: the attacker replays the known plan (epochs, batch size,
learning rate, momentum, weight decay) on the dummy records, differentiably, batches in a fixed
order because the client's shuffle is unknown, and matches the simulated parameter change.
Either way the model runs in train mode, so a BatchNorm normalizes by the batch as it did on
the client; the sent model itself is never touched (a copy is called functionally).
"""

from __future__ import annotations

import contextlib
import copy
import time
from abc import abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from fedmia.attacks.base import Parameter
from fedmia.inversion.base import ClientUpdate, GradientInversionAttack, Reconstruction, total_variation
from fedmia.inversion.labels import estimated_gradient, recover_labels
from fedmia.training import TrainingPlan, train_epochs


def euclidean(simulated: list[torch.Tensor], observed: list[torch.Tensor]) -> torch.Tensor:
    """DLG's squared Euclidean distance, divided by the observed update's squared norm so one
    learning rate and one tolerance suit every model and step size."""
    gap = sum(((s - o) ** 2).sum() for s, o in zip(simulated, observed))
    return gap / sum((o**2).sum() for o in observed).clamp_min(1e-30)


def cosine(simulated: list[torch.Tensor], observed: list[torch.Tensor]) -> torch.Tensor:
    """One minus the cosine between the whole updates (all parameters as one vector): the
    direction carries the records, the norm mostly the loss value (Geiping et al.)."""
    dot = sum((s * o).sum() for s, o in zip(simulated, observed))
    norms = (sum((s**2).sum() for s in simulated) * sum((o**2).sum() for o in observed)).sqrt()
    return 1 - dot / norms.clamp_min(1e-30)


def observe_round(model: nn.Module, images: np.ndarray, labels: np.ndarray, plan: TrainingPlan,
                  seed: int, num_classes: int) -> ClientUpdate:
    """A client's round as the server sees it: `model` sent, a copy trained on the records
    with the plan (fedmia's own local training), its weights returned."""
    trained = copy.deepcopy(model)
    train_epochs(trained, images, labels, plan, seed)
    returned = {name: weight.detach().clone() for name, weight in trained.named_parameters()}
    return ClientUpdate(copy.deepcopy(model), returned, len(labels), plan, num_classes,
                        tuple(images.shape[1:]))


class ClientSimulation:
    """The client's local training replayed on dummy records, differentiable in them, and the
    observed update it must reproduce."""

    def __init__(self, update: ClientUpdate) -> None:
        self.update = update
        self.model = copy.deepcopy(update.sent).train()
        self.model.requires_grad_(False)
        self.start = {name: weight.detach().clone()
                      for name, weight in update.sent.named_parameters()}
        self.device = next(iter(self.start.values())).device
        #: One step: the gradient is matched; several: the parameter change.
        self.fedsgd = update.steps == 1
        observed = estimated_gradient(update) if self.fedsgd else update.parameter_change()
        self.observed = [tensor.detach().to(self.device) for tensor in observed]

    def gradient(self, weights: dict[str, torch.Tensor], images: torch.Tensor,
                 targets: torch.Tensor) -> list[torch.Tensor]:
        """The batch's loss gradient at `weights`, kept differentiable in the records."""
        logits = functional_call(self.model, weights, (images,))
        loss = nn.functional.cross_entropy(logits, targets)
        return list(torch.autograd.grad(loss, list(weights.values()), create_graph=True))

    def simulate(self, images: torch.Tensor, targets: torch.Tensor) -> list[torch.Tensor]:
        """What the client would have sent for these records: the gradient (FedSGD) or the
        change after the plan's local SGD steps (FedAvg), in `observed`'s order."""
        weights = {name: tensor.clone().requires_grad_(True) for name, tensor in self.start.items()}
        if self.fedsgd:
            return self.gradient(weights, images, targets)
        plan = self.update.plan
        velocity: list[torch.Tensor] | None = None
        size = plan.batch_for(len(images))
        for _ in range(plan.local_epochs):
            for start in range(0, len(images), size):
                batch = slice(start, start + size)
                grads = self.gradient(weights, images[batch], targets[batch])
                steps = [g + plan.weight_decay * w for g, w in zip(grads, weights.values())]
                velocity = steps if velocity is None else [
                    plan.momentum * v + s for v, s in zip(velocity, steps)]
                weights = {name: w - plan.lr * v
                           for (name, w), v in zip(weights.items(), velocity)}
        return [self.start[name] - weights[name] for name in self.start]


@contextlib.contextmanager
def deterministic() -> Iterator[None]:
    """Deterministic kernels while an attack runs (CPU kernels are; this catches the rest,
    warning where a GPU kernel has no deterministic form), the previous setting restored."""
    enabled, warn_only = (torch.are_deterministic_algorithms_enabled(),
                          torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


@dataclass
class Trial:
    """One optimization from one random start: its images, labels and final objective."""

    images: torch.Tensor
    labels: np.ndarray
    objective: float


class UpdateMatchingAttack(GradientInversionAttack):
    """Seeded restarts of `trial`, the one with the lowest objective kept."""

    def reconstruct(self, update: ClientUpdate, seed: int) -> Reconstruction:
        started = time.perf_counter()
        with deterministic(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            generator = torch.Generator().manual_seed(seed)
            simulation = ClientSimulation(update)
            trials = [self.trial(simulation, generator, seed)
                      for _ in range(self.params.get("restarts", 1))]
        best = int(np.argmin([trial.objective for trial in trials]))
        images = trials[best].images.detach().clamp(0, 1).cpu().numpy().astype(np.float32)
        details = {"objectives": [trial.objective for trial in trials], "restart": best,
                   "matched": "gradient" if simulation.fedsgd else "parameter change"}
        return Reconstruction(images, trials[best].labels, time.perf_counter() - started, details)

    @abstractmethod
    def trial(self, simulation: ClientSimulation, generator: torch.Generator, seed: int) -> Trial:
        """One optimization from random images drawn from `generator`."""


def random_images(simulation: ClientSimulation, generator: torch.Generator) -> torch.Tensor:
    """Uniform noise in [0, 1], the records' range, as the optimization's start."""
    update = simulation.update
    shape = (update.num_examples, *update.input_shape)
    return torch.rand(shape, generator=generator).to(simulation.device).requires_grad_(True)


def lbfgs(variables: list[torch.Tensor], objective: Callable[[], torch.Tensor], iterations: int,
          lr: float) -> float:
    """Minimize with L-BFGS (strong Wolfe line search) for at most `iterations` iterations;
    the final objective."""
    optimizer = torch.optim.LBFGS(variables, lr=lr, max_iter=iterations, history_size=100,
                                  tolerance_grad=1e-12, tolerance_change=1e-15,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        value = objective()
        value.backward()
        return value

    optimizer.step(closure)
    return float(objective().detach())


DLG_PARAMETERS = {
    "iterations": Parameter(100, 1, 100_000, help="L-BFGS iterations (each a few update simulations)"),
    "lr": Parameter(1.0, 1e-4, 10.0, help="L-BFGS step size (1 as in the paper)"),
}


class DeepLeakage(UpdateMatchingAttack):
    """DLG: images and soft labels optimized jointly to match the update in Euclidean
    distance; each label is its soft label's largest class."""

    name = "dlg"
    parameters = DLG_PARAMETERS

    def trial(self, simulation: ClientSimulation, generator: torch.Generator, seed: int) -> Trial:
        images = random_images(simulation, generator)
        update = simulation.update
        soft = torch.randn((update.num_examples, update.num_classes), generator=generator)
        soft = soft.to(simulation.device).requires_grad_(True)

        def objective() -> torch.Tensor:
            return euclidean(simulation.simulate(images, soft.softmax(dim=1)), simulation.observed)

        value = lbfgs([images, soft], objective, self.params["iterations"], self.params["lr"])
        return Trial(images, soft.argmax(dim=1).cpu().numpy().astype(np.int64), value)


class ImprovedDeepLeakage(UpdateMatchingAttack):
    """iDLG: labels from the last layer (exact for one record), then DLG on the images."""

    name = "idlg"
    parameters = DLG_PARAMETERS

    def trial(self, simulation: ClientSimulation, generator: torch.Generator, seed: int) -> Trial:
        images = random_images(simulation, generator)
        labels = recover_labels(simulation.update, seed)
        targets = torch.as_tensor(labels, device=simulation.device)

        def objective() -> torch.Tensor:
            return euclidean(simulation.simulate(images, targets), simulation.observed)

        return Trial(images, labels, lbfgs([images], objective, self.params["iterations"],
                                           self.params["lr"]))


class InvertingGradients(UpdateMatchingAttack):
    """Geiping et al.: cosine distance plus total variation, signed Adam with the learning rate
    cut tenfold at 3/8, 5/8 and 7/8 of the iterations, images kept in [0, 1]."""

    name = "inverting-gradients"
    parameters = {
        "iterations": Parameter(400, 1, 100_000, help="Adam steps per restart"),
        "restarts": Parameter(2, 1, 64, help="random starts; the lowest objective is kept"),
        "lr": Parameter(0.1, 1e-5, 10.0, help="Adam's initial learning rate"),
        "tv": Parameter(1e-3, 0.0, 10.0, help="weight of the total-variation prior"),
    }

    def trial(self, simulation: ClientSimulation, generator: torch.Generator, seed: int) -> Trial:
        images = random_images(simulation, generator)
        labels = recover_labels(simulation.update, seed)
        targets = torch.as_tensor(labels, device=simulation.device)
        iterations = self.params["iterations"]
        optimizer = torch.optim.Adam([images], lr=self.params["lr"])
        schedule = torch.optim.lr_scheduler.MultiStepLR(
            optimizer, [iterations * 3 // 8, iterations * 5 // 8, iterations * 7 // 8], gamma=0.1)

        def objective() -> torch.Tensor:
            matched = cosine(simulation.simulate(images, targets), simulation.observed)
            return matched + self.params["tv"] * total_variation(images).mean()

        for _ in range(iterations):
            optimizer.zero_grad()
            objective().backward()
            images.grad.sign_()
            optimizer.step()
            schedule.step()
            with torch.no_grad():
                images.clamp_(0, 1)
        return Trial(images, labels, float(objective().detach()))


#: The gradient-inversion attacks by name.
GRADIENT_ATTACKS: dict[str, type[UpdateMatchingAttack]] = {
    attack.name: attack for attack in (DeepLeakage, ImprovedDeepLeakage, InvertingGradients)
}
