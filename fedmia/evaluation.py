"""The adversary's attack phase, Flower-free: from the saved models to per-scope results.

Scopes (PROTOCOL.md): `global` attacks the final global model (members = every client's data);
`client:k` attacks client k's last upload (members = client k's data). Each scope is evaluated
on a balanced set (equal members and non-members, subsampled with the run's seed), balanced per
class so that the non-members share the members' label distribution. That set is cut into two
seeded halves, balanced per class: the attack and threshold of the scope's measured epsilon
bound are chosen on the selection half, and the bound is computed on the other
(docs/PROTOCOL.md).

Utility of each target is measured here too, by the adversary's evaluator that holds the split:
accuracy on the target's own members (after training, unlike the running accuracy a client sees
during its round) and on the test pool, and their difference, the generalization gap.

Calibration uses only the adversary's knowledge: its population pool, split into shadow
members and shadow non-members, and shadow models it trains itself the way the target was
trained. For `client:k` the server also knows the global model client k started from, so its
shadow is that model fine-tuned on a client-sized slice of the population (the rest of the
population are its non-members); for `global` the shadow is trained from scratch on half of the
population.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedmia.attacks import AdversaryKnowledge, ShadowObservation, TargetModel, make_attack
from fedmia.errors import FedmiaError
from fedmia.metrics import (
    BOUND_HALF,
    SELECTION_HALF,
    AttackMetrics,
    HeldOutBound,
    held_out_bound,
    membership_metrics,
)
from fedmia.privacy import default_delta
from fedmia.rundir import FINAL_GLOBAL_MODEL, RunDirectory, client_model_name, global_round_name
from fedmia.run import PreparedRun, round_seed
from fedmia.training import accuracy, predict_logits, train_epochs

GLOBAL_SCOPE = "global"


def client_scope(client: int) -> str:
    return f"client:{client}"


@dataclass(frozen=True)
class ScopeResult:
    """All attacks on one scope. `strongest` is the attack with the highest AUC (on all
    labels: a description, not a choice the bound depends on); `bound` is the held-out epsilon
    lower bound, whose attack was chosen on the selection half only."""

    scope: str
    train_accuracy: float
    test_accuracy: float
    attacks: dict[str, AttackMetrics]
    threshold_accuracy: dict[str, float]
    bound: HeldOutBound

    @property
    def strongest(self) -> str:
        return max(self.attacks, key=lambda name: self.attacks[name].auc)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "train_accuracy": self.train_accuracy,
            "test_accuracy": self.test_accuracy,
            "generalization_gap": self.train_accuracy - self.test_accuracy,
            "strongest_attack": self.strongest,
            "eps_lower_bound": self.bound.eps_lower_bound,
            "eps_bound": self.bound.to_dict(),
            "eps_lower_bound_optimistic": max(m.eps_lower_bound_optimistic for m in self.attacks.values()),
            "attacks": {name: {**m.to_dict(), "threshold_accuracy": self.threshold_accuracy[name]}
                        for name, m in self.attacks.items()},
        }


def balanced_eval_set(members: np.ndarray, nonmember_pool: np.ndarray, labels: np.ndarray,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(indices, membership) with equally many members and non-members *per class*.

    Non-members must come from the members' distribution: a client that holds two classes,
    compared with non-members of all ten, would be "detected" by its label skew alone. So for
    every class, as many members as non-members of that class are drawn (the smaller count).
    """
    chosen_members, chosen_nonmembers = [], []
    for label in np.unique(labels[members]):
        in_class = members[labels[members] == label]
        pool_class = nonmember_pool[labels[nonmember_pool] == label]
        size = min(len(in_class), len(pool_class))
        chosen_members.append(rng.choice(in_class, size, replace=False))
        chosen_nonmembers.append(rng.choice(pool_class, size, replace=False))
    member_part = np.sort(np.concatenate(chosen_members))
    nonmember_part = np.sort(np.concatenate(chosen_nonmembers))
    indices = np.concatenate([member_part, nonmember_part])
    membership = np.concatenate([np.ones(len(member_part), dtype=np.int64),
                                 np.zeros(len(nonmember_part), dtype=np.int64)])
    return indices, membership


def split_halves(classes: np.ndarray, membership: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """SELECTION_HALF or BOUND_HALF per sample of a per-class balanced evaluation set.

    Within each class, members and non-members are shuffled and paired; pairs go to the two
    halves in turn, the alternation running on across classes. So each half keeps one
    non-member per member of every class (the label skew stays uninformative), the halves
    differ by at most one pair, and every class by at most one pair."""
    halves = np.empty(len(membership), dtype=np.int8)
    turn = 0
    for label in np.unique(classes):
        in_class = classes == label
        members = rng.permutation(np.flatnonzero(in_class & (membership == 1)))
        nonmembers = rng.permutation(np.flatnonzero(in_class & (membership == 0)))
        if len(members) != len(nonmembers):
            raise ValueError(f"class {label} has {len(members)} members but {len(nonmembers)} "
                             "non-members; the evaluation set must be balanced per class")
        sides = np.where((turn + np.arange(len(members))) % 2 == 0, SELECTION_HALF, BOUND_HALF)
        halves[members], halves[nonmembers] = sides, sides
        turn += len(members)
    return halves


def _shadow_observation(run: PreparedRun, model: nn.Module, shadow_in: np.ndarray,
                        shadow_out: np.ndarray) -> ShadowObservation:
    indices = np.concatenate([shadow_in, shadow_out])
    logits = predict_logits(model, run.images(indices), run.config.device)
    membership = np.concatenate([np.ones(len(shadow_in)), np.zeros(len(shadow_out))]).astype(int)
    return ShadowObservation(logits, run.labels(indices), membership)


def train_shadow(run: PreparedRun, start: nn.Module, size: int, epochs: int, seed: int) -> ShadowObservation:
    """Train `start` on `size` population samples; the rest of the pool are its non-members."""
    rng = np.random.default_rng(seed)
    population = rng.permutation(run.split.population)
    size = min(size, len(population) // 2)
    shadow_in, shadow_out = population[:size], population[size:]
    torch.manual_seed(seed)
    train_epochs(start, run.images(shadow_in), run.labels(shadow_in), run.plan, seed, epochs=epochs)
    return _shadow_observation(run, start, shadow_in, shadow_out)


def attack_scope(run: PreparedRun, scope: str, target: nn.Module, knowledge: AdversaryKnowledge,
                 members: np.ndarray, delta: float, seed: int) -> ScopeResult:
    """Fit every configured attack on `knowledge`, score the balanced set, save the scores,
    bound epsilon on the held-out half, and measure the target's train and test accuracy."""
    rng = np.random.default_rng(seed)
    indices, labels = balanced_eval_set(members, run.split.nonmembers, run.dataset.labels, rng)
    images, targets = run.images(indices), run.labels(indices)
    halves = split_halves(targets, labels, rng)
    access = TargetModel(target, run.config.device)
    metrics, decisions, all_scores = {}, {}, {}
    for name in run.config.attacks:
        attack = make_attack(name).fit(knowledge)
        scores = all_scores[name] = attack.score(access, images, targets)
        run.rundir.save_scores(scope, name, scores, labels, indices, halves)
        metrics[name] = membership_metrics(scores, labels, delta)
        decisions[name] = float((attack.decide(scores) == labels.astype(bool)).mean())
    device = run.config.device
    train_accuracy = accuracy(target, run.images(members), run.labels(members), device)
    test_accuracy = accuracy(target, run.images(run.split.test), run.labels(run.split.test), device)
    return ScopeResult(scope, train_accuracy, test_accuracy, metrics, decisions,
                       held_out_bound(all_scores, labels, halves, delta))


def saved_held_out_bound(rundir: RunDirectory, scope: str, attacks: list[str], delta: float) -> HeldOutBound:
    """The held-out bound of a scope again, from its saved scores, labels and halves alone."""
    saved = {name: rundir.load_scores(scope, name) for name in attacks}
    first = saved[attacks[0]]
    return held_out_bound({name: data["scores"] for name, data in saved.items()}, first["labels"],
                          first["halves"], delta)


def attack_global(run: PreparedRun) -> ScopeResult:
    """The final global model against the union of all clients' data."""
    config = run.config
    target = run.model_from_state(run.rundir.load_model(FINAL_GLOBAL_MODEL))
    epochs = config.rounds * config.local_epochs
    shadow = train_shadow(run, run.new_model(), len(run.split.members), epochs,
                          round_seed(config.seed, 1_000_003))
    knowledge = AdversaryKnowledge((shadow,), run.dataset.num_classes)
    members = run.split.members
    return attack_scope(run, GLOBAL_SCOPE, target, knowledge, members,
                        default_delta(len(members)), round_seed(config.seed, 1_000_004))


def attack_client(run: PreparedRun, client: int, upload_round: int, delta: float) -> ScopeResult:
    """Client `client`'s last upload (sent in `upload_round`) against its own data."""
    config = run.config
    target = run.model_from_state(run.rundir.load_model(client_model_name(client)))
    start = run.model_from_state(run.rundir.load_model(global_round_name(upload_round - 1)))
    members = run.split.clients[client]
    shadow = train_shadow(run, start, len(members), config.local_epochs,
                          round_seed(config.seed, 2_000_003, client))
    knowledge = AdversaryKnowledge((shadow,), run.dataset.num_classes)
    return attack_scope(run, client_scope(client), target, knowledge, members, delta,
                        round_seed(config.seed, 2_000_004, client))


def last_client_reports(run: PreparedRun) -> dict[int, dict[str, Any]]:
    """Each client's latest report that came with a model, with the round it was sent in."""
    latest: dict[int, dict[str, Any]] = {}
    for record in run.rundir.read_metrics():
        for report in record["clients"]:
            if not report.get("stopped"):
                latest[report["client"]] = {**report, "round": record["round"]}
            elif report["client"] in latest:
                latest[report["client"]]["stopped_later"] = True
    return latest


def client_row(run: PreparedRun, client: int, report: dict[str, Any] | None,
               scope: ScopeResult | None) -> dict[str, Any]:
    spec = run.config.defenses[client]
    row: dict[str, Any] = {"client": client, "defense": spec.name, "params": spec.params,
                           "n_train": int(len(run.split.clients[client]))}
    if report is None:
        return {**row, "trained": False}
    return {**row, "trained": True, "last_round": report["round"], "privacy": report.get("privacy"),
            "stopped": bool(report.get("stopped_later")), **(scope.to_dict() if scope else {})}


def evaluate_privacy(run: PreparedRun, on_scope: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Attack the global model and every client's last upload; the `global` and `clients`
    tables of results.json."""
    notify = on_scope or (lambda scope: None)
    notify(GLOBAL_SCOPE)
    global_result = attack_global(run)
    reports = last_client_reports(run)
    rows = []
    for client in range(run.config.clients):
        report = reports.get(client)
        scope = None
        if report is not None:
            notify(client_scope(client))
            privacy = report.get("privacy") or {}
            delta = privacy.get("delta") or default_delta(len(run.split.clients[client]))
            scope = attack_client(run, client, report["round"], delta)
        rows.append(client_row(run, client, report, scope))
    return {"global": global_result.to_dict(), "clients": rows}


def reattack(path: Path, attacks: tuple[str, ...] | None = None) -> dict[str, Any]:
    """The attack phase and report again, from a run directory whose training finished."""
    from fedmia.report import write_outputs
    from fedmia.run import load_prepared_run
    from fedmia.timing import RunTimer

    if not RunDirectory(path).has_model(FINAL_GLOBAL_MODEL):
        raise FedmiaError(f"{path} has no final global model; only a run whose training "
                          "finished can be attacked again")
    run = load_prepared_run(str(path))
    if attacks:
        run = replace(run, config=replace(run.config, attacks=attacks))
        run.rundir.write_text("config.toml", run.config.to_toml())
    timer = RunTimer()
    with timer.phase("attacks"):
        results = evaluate_privacy(run)
    previous = run.rundir.read_json("results.json") if (run.rundir.path / "results.json").exists() else {}
    results["client_level_dp"] = previous.get("client_level_dp")
    return write_outputs(run, results, timer)
