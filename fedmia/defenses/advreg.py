"""`advreg` (Nasr, Shokri & Houmansadr 2018, adversarial regularization): local training is a
min-max game against an inference model h that tells the client's records from non-members by
the model's output. Before each classifier step, h takes `inference_steps` steps (Adam,
`inference_lr`) maximizing its gain, log h on the step's batch (members) plus log(1 - h) on as
many records of the run's public pool (non-members, which no client trains on); then the
classifier minimizes its cross-entropy plus `weight` times log h on the batch, so it is pushed
towards outputs on which the best current attacker sees no members. Nasr et al. weight the gain
by lambda of about 1-3; seed 002 uses 0.1, the default here.

h is the paper's simplified form without the input image: an MLP on the model's
log-probabilities and the target vector (the one-hot label, or the mixed target under mixup).
They are not sorted, so h can read the true class's probability, the strongest member signal,
and they are logarithms because member and non-member confidences differ in their last decimals
(0.999 against 0.99), which a small MLP on probabilities barely separates. Public records pass
through the model in training mode like the batch, so h sees both alike (with BatchNorm they
also enter its running statistics).

h is rebuilt from the round's seed at the start of every round rather than carried in
`state_dict`: the global model it attacks changes between rounds, and its weights (thousands of
floats, more with more classes) do not belong in a JSON state. The game couples the samples of
a batch, so the objective does not compose with per-sample clipping.
"""

from __future__ import annotations

import torch
from torch import nn

from fedmia.defenses.base import ClientData, RoundContext, check_param
from fedmia.defenses.recipe import Objective, Recipe, RecipeDefense
from fedmia.errors import FedmiaError
from fedmia.seeding import round_seed

#: Seed keys of this defense's streams (reference draws, h's initial weights).
REFERENCE_STREAM, INFERENCE_INIT_STREAM = 8_000_001, 8_000_002


def target_vectors(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Labels as one-hot rows; probability targets (mixup, soft labels) as they are."""
    return targets.float() if targets.dim() == 2 else nn.functional.one_hot(targets, num_classes).float()


class InferenceModel(nn.Module):
    """h: the logit of "member" from log-probabilities and a target vector."""

    def __init__(self, num_classes: int, width: int = 64) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(2 * num_classes, width), nn.ReLU(),
            nn.Linear(width, width // 2), nn.ReLU(),
            nn.Linear(width // 2, 1),
        )

    def forward(self, log_probabilities: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.layers(torch.cat([log_probabilities, targets], dim=1)).squeeze(1)


class AdversarialObjective(Objective):
    """Cross-entropy plus `weight` times h's log-probability of "member" on the batch, with h
    trained against the public pool before every step."""

    name = "advreg"
    decomposes = False

    def __init__(self, weight: float, inference_steps: int, inference_lr: float,
                 reference: tuple[torch.Tensor, torch.Tensor], num_classes: int, seed: int) -> None:
        self.weight = weight
        self.inference_steps = inference_steps
        self.reference_images, self.reference_labels = reference
        self.num_classes = num_classes
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(round_seed(seed, INFERENCE_INIT_STREAM))
            self.inference = InferenceModel(num_classes).to(self.reference_images.device)
        self.optimizer = torch.optim.Adam(self.inference.parameters(), lr=inference_lr)
        self.generator = torch.Generator(self.reference_images.device).manual_seed(
            round_seed(seed, REFERENCE_STREAM))
        self.model: nn.Module | None = None

    def bind(self, model: nn.Module) -> None:
        self.model = model

    def batch_loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        vectors = target_vectors(targets, self.num_classes)
        outputs = nn.functional.log_softmax(logits.detach(), dim=1)
        for _ in range(self.inference_steps):
            self.inference_step(outputs, vectors)
        gain = nn.functional.logsigmoid(self.inference(nn.functional.log_softmax(logits, dim=1), vectors))
        return nn.functional.cross_entropy(logits, targets) + self.weight * gain.mean()

    def inference_step(self, members: torch.Tensor, member_targets: torch.Tensor) -> None:
        """One ascent step of h's gain: the batch's outputs (members) against those on as many
        fresh public records."""
        if self.model is None:
            raise RuntimeError("advreg's objective runs the model on the public pool; bind it first")
        rows = torch.randint(len(self.reference_labels), (len(members),), generator=self.generator,
                             device=self.generator.device)
        with torch.no_grad():
            reference = nn.functional.log_softmax(self.model(self.reference_images[rows]), dim=1)
        scores = self.inference(torch.cat([members, reference]),
                                torch.cat([member_targets, target_vectors(self.reference_labels[rows],
                                                                           self.num_classes)]))
        is_member = torch.cat([torch.ones(len(members)), torch.zeros(len(rows))]).to(scores.device)
        self.optimizer.zero_grad(set_to_none=True)
        nn.functional.binary_cross_entropy_with_logits(scores, is_member).backward()
        self.optimizer.step()


class AdversarialRegularization(RecipeDefense):
    name = "advreg"
    needs_public_pool = True

    def __init__(self, weight: float = 0.1, inference_steps: int = 1, inference_lr: float = 1e-3) -> None:
        self.weight = check_param("weight", weight, 0.0, 100.0, defense=self.name)
        steps = check_param("inference_steps", inference_steps, 1, 100, defense=self.name)
        if not steps.is_integer():
            raise FedmiaError(f"defense 'advreg': inference_steps={inference_steps} must be a whole "
                              "number of steps")
        self.inference_steps = int(steps)
        self.inference_lr = check_param("inference_lr", inference_lr, 1e-6, 1.0, defense=self.name)

    def fill(self, recipe: Recipe, data: ClientData, context: RoundContext) -> None:
        images, labels = data.public(self.name)
        recipe.claim("objective", self.name)
        device = context.plan.device
        reference = (torch.as_tensor(images, device=device), torch.as_tensor(labels, device=device))
        recipe.objective = AdversarialObjective(self.weight, self.inference_steps, self.inference_lr,
                                                reference, data.num_classes, context.seed)
