"""MemGuard (Jia et al., CCS 2019): noise on the released scores that turns a membership
classifier's answer into a coin flip, without changing the predicted label.

The defender trains its own membership classifier g on the model's outputs on records it
trained on and records it did not: a one-hidden-layer network on the probability vector sorted
in decreasing order (label-free, so one network serves every class and needs no true label at
query time, which the defender does not have). Each answer then goes through the paper's two
phases:

Phase I searches, for every row at once, noise e on the logits z minimizing
|h(softmax(z + e))| + c2 * ReLU(max_{j != l}(z_j + e_j) - (z_l + e_l)) + c3 * ||softmax(z + e) - softmax(z)||_1,
where h is g's log-odds (0 is g's coin flip) and l the predicted label, by normalized gradient
steps; a row stops once g's decision has flipped with its label kept. Its last step is then
bisected down to g's boundary (the paper stops a step past it, see `_land`). Like the paper, the
search restarts with c3 ten times larger while it still succeeds (smaller noise), and a row
keeps the noise of its last successful search (none if the first one failed).

Phase II adds a row's noise with probability p = min(1, epsilon / distortion), so every
answer's expected L1 distortion stays within `epsilon`. The coin is a keyed hash of the row,
not a stream: the same query always gets the same answer (asking again cannot average the
coin away) whatever the order of queries.

What it does not hide: anything g does not see. Answers land on g's boundary, but where on it
depends on where they started, so with many classes a ranking attack (AUC) can still read a
small membership-correlated offset, and g sees probabilities, which saturate on memorized
records; the label, and so correctness, is never changed.
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from fedmia.attacks.base import Parameter
from fedmia.errors import FedmiaError
from fedmia.release.base import ReleaseDefense, probability_l1

#: Weight of the distortion term in the first search; each further search multiplies it by 10.
INITIAL_C3 = 0.1
#: Searches per row at most (c3 = 0.1, 1, 10): the paper goes on until one fails.
SEARCHES = 3
#: Halvings of the last step, locating where it crossed g's boundary (to 2^-20 of a step).
BISECTIONS = 20
#: Full-batch Adam epochs and step size of the defense classifier.
FIT_EPOCHS = 400
FIT_LR = 0.01


def sorted_probs(logits: torch.Tensor) -> torch.Tensor:
    """The defense classifier's input: the probability vector in decreasing order."""
    return torch.sort(torch.softmax(logits, dim=1), dim=1, descending=True).values


def label_margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row, how far the best other class is above the label's logit (negative: label kept)."""
    others = logits.scatter(1, labels[:, None], -torch.inf)
    return others.max(dim=1).values - logits.gather(1, labels[:, None])[:, 0]


class MemGuardRelease(ReleaseDefense):
    """Noise that leaves the defender's own membership classifier undecided; see the module."""

    name: ClassVar[str] = "memguard"
    needs_reference_data = True
    parameters: ClassVar[dict[str, Parameter]] = {
        "epsilon": Parameter(1.0, low=0.0, high=2.0,
                             help="expected L1 distortion of each released probability vector, at most"),
        "steps": Parameter(300, low=1, high=100_000, help="gradient steps of each noise search"),
        "lr": Parameter(0.1, low=1e-6, high=10.0, help="length of each step in logit space"),
        "label_weight": Parameter(10.0, low=0.0, high=1e6, help="c2: weight of the keep-the-label penalty"),
        "hidden": Parameter(64, low=1, high=4096, help="hidden units of the defense classifier"),
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._classifier: nn.Sequential | None = None
        self._key = b""
        self._classifier_accuracy = 0.0
        self._searched = 0
        self._found = 0
        self._expected_l1_sum = 0.0
        self._expected_l1_max = 0.0

    def _fit(self, member_logits: np.ndarray, nonmember_logits: np.ndarray,
             labels_members: np.ndarray, labels_nonmembers: np.ndarray, seed: int) -> None:
        """Train g on the balanced member/non-member log-loss (the sets may differ in size). The
        labels go unused: g is label-free."""
        if len(member_logits) == 0 or len(nonmember_logits) == 0:
            raise FedmiaError(f"release defense {self.name!r} needs the model's outputs on both members and "
                              f"non-members (got {len(member_logits)} and {len(nonmember_logits)}); "
                              "give the releasing party records of both")
        shape = member_logits.shape
        if len(shape) != 2 or shape[1] < 2 or nonmember_logits.shape[1:] != shape[1:]:
            raise FedmiaError(f"release defense {self.name!r} needs logits of one classifier with at least two "
                              f"classes, got shapes {member_logits.shape} and {nonmember_logits.shape}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            classifier = nn.Sequential(nn.Linear(member_logits.shape[1], self.params["hidden"]), nn.ReLU(),
                                       nn.Linear(self.params["hidden"], 1)).double()
        features = sorted_probs(torch.as_tensor(np.vstack([member_logits, nonmember_logits])))
        membership = torch.cat([torch.ones(len(member_logits)), torch.zeros(len(nonmember_logits))]).double()
        loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(len(nonmember_logits) / len(member_logits)))
        optimizer = torch.optim.Adam(classifier.parameters(), lr=FIT_LR)
        for _ in range(FIT_EPOCHS):
            optimizer.zero_grad()
            loss_fn(classifier(features)[:, 0], membership).backward()
            optimizer.step()
        classifier.requires_grad_(False)
        with torch.no_grad():
            said_member = classifier(features)[:, 0] > 0
        self._classifier_accuracy = 0.5 * float(said_member[membership == 1].double().mean()
                                                + (~said_member[membership == 0]).double().mean())
        self._classifier = classifier
        self._key = hashlib.blake2b(str(seed).encode(), digest_size=32).digest()

    def _log_odds(self, logits: torch.Tensor) -> torch.Tensor:
        assert self._classifier is not None
        return self._classifier(sorted_probs(logits))[:, 0]

    def _loss(self, z: torch.Tensor, e: torch.Tensor, labels: torch.Tensor, c3: float) -> torch.Tensor:
        """Per row, the phase I loss at noise e."""
        noisy = z + e
        distortion = (torch.softmax(noisy, dim=1) - torch.softmax(z, dim=1)).abs().sum(dim=1)
        label_penalty = torch.relu(label_margin(noisy, labels))
        return self._log_odds(noisy).abs() + self.params["label_weight"] * label_penalty + c3 * distortion

    def _crossed(self, z: torch.Tensor, e: torch.Tensor, labels: torch.Tensor,
                 start_odds: torch.Tensor) -> torch.Tensor:
        """Per row, whether noise e is done: label kept, g's decision flipped (or undecided)."""
        with torch.no_grad():
            return ((z + e).argmax(dim=1) == labels) & (self._log_odds(z + e) * start_odds <= 0)

    def _search(self, z: torch.Tensor, labels: torch.Tensor, start_odds: torch.Tensor,
                c3: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized gradient steps on the rows not done yet: (the noise before each row's
        last step, the noise after it)."""
        e, previous = torch.zeros_like(z), torch.zeros_like(z)
        moving = torch.ones(len(z), dtype=torch.bool)
        for _ in range(self.params["steps"]):
            rows = moving.nonzero()[:, 0]
            if len(rows) == 0:
                break
            done = self._crossed(z[rows], e[rows], labels[rows], start_odds[rows])
            moving[rows[done]] = False
            rows = rows[~done]
            noise = e[rows].clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(self._loss(z[rows], noise, labels[rows], c3).sum(), noise)
            previous[rows] = noise.detach()
            direction = grad / grad.norm(dim=1, keepdim=True).clamp_min(1e-300)
            e[rows] = (noise - self.params["lr"] * direction).detach()
        return previous, e

    def _land(self, z: torch.Tensor, before: torch.Tensor, after: torch.Tensor, labels: torch.Tensor,
              start_odds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(noise, found): where a row's last step crossed g's boundary, by bisection, for the
        rows whose search got there. Of the final bracket it keeps the end closer to the
        boundary, on either side: a full step, or always the crossed side, would leave every
        member a little on the non-member side and every non-member on the member side, an
        order a ranking attack reads."""
        with torch.no_grad():
            for _ in range(BISECTIONS):
                middle = (before + after) / 2
                done = self._crossed(z, middle, labels, start_odds)[:, None]
                before, after = torch.where(done, before, middle), torch.where(done, middle, after)
            found = self._crossed(z, after, labels, start_odds)
            closer = (((z + before).argmax(dim=1) == labels)
                      & (self._log_odds(z + before).abs() < self._log_odds(z + after).abs()))
        return torch.where(closer[:, None], before, after), found

    def _phase_one(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(noise per row, whether a search found it): the last successful search's noise."""
        z = torch.as_tensor(logits)
        labels = torch.as_tensor(logits.argmax(axis=1))
        with torch.no_grad():
            start_odds = self._log_odds(z)
        best = torch.zeros_like(z)
        found = torch.zeros(len(z), dtype=torch.bool)
        active = torch.arange(len(z))
        c3 = INITIAL_C3
        for _ in range(SEARCHES):
            if len(active) == 0:
                break
            rows, row_labels, row_odds = z[active], labels[active], start_odds[active]
            noise, done = self._land(rows, *self._search(rows, row_labels, row_odds, c3), row_labels, row_odds)
            best[active[done]] = noise[done]
            found[active[done]] = True
            active = active[done]
            c3 *= 10
        return best.numpy(), found.numpy()

    def _coins(self, logits: np.ndarray) -> np.ndarray:
        """A uniform draw in [0, 1) per row, fixed by the row's bytes and the fit's seed."""
        return np.array([int.from_bytes(hashlib.blake2b(row.tobytes(), key=self._key, digest_size=8).digest(),
                                        "little") for row in logits]) / 2.0**64

    def _release(self, logits: np.ndarray) -> np.ndarray:
        if self._classifier is None:
            raise RuntimeError(f"release defense {self.name!r} must be fit before it releases")
        classes = self._classifier[0].in_features
        if logits.shape[1] != classes:
            raise ValueError(f"release defense {self.name!r} was fit on {classes} classes, got {logits.shape[1]}")
        noise, found = self._phase_one(logits)
        distortion = probability_l1(logits, logits + noise)
        epsilon = self.params["epsilon"]
        keep = np.where(distortion <= epsilon, 1.0, epsilon / np.maximum(distortion, 1e-300))
        expected = keep * distortion
        self._searched += len(logits)
        self._found += int(found.sum())
        self._expected_l1_sum += float(expected.sum())
        self._expected_l1_max = max(self._expected_l1_max, float(expected.max(initial=0.0)))
        return logits + noise * (self._coins(logits) < keep)[:, None]

    def details(self) -> dict[str, Any]:
        """Also: how well g separated its own training data (balanced accuracy), how often
        phase I found noise, and the expected L1 distortion (what epsilon bounds, per answer)."""
        rows = max(self._searched, 1)
        return {**super().details(),
                "classifier_balanced_accuracy": self._classifier_accuracy,
                "noise_found_fraction": self._found / rows,
                "mean_expected_l1": self._expected_l1_sum / rows,
                "max_expected_l1": self._expected_l1_max}
