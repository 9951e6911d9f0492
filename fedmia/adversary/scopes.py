"""One attacked scope, set up for its adversary: the target as that adversary may see it, the
candidate records, and the adversary's knowledge (shadow model, population, own data) and the
recipe its reference models follow.

| scope         | adversary  | target                      | members                  | sees                   |
|---------------|------------|-----------------------------|--------------------------|------------------------|
| `global`      | server     | final global model          | every client's data      | everything, all rounds |
| `client:k`    | server     | client k's last upload      | client k's data          | everything, its uploads|
| `querier`     | querier    | final global model          | every client's data      | outputs at granularity |
| `malicious:j` | client:j   | final global model          | the other clients' data  | weights it received    |

Shadow models: for `client:k` the server fine-tunes the global model client k started from on a
client-sized slice of the population (the rest are its non-members); otherwise the shadow is
trained from the initial model on half of the population. Seeds are per scope, so scopes can
run in any order and in any process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fedmia.adversary.candidates import balanced_eval_set, malicious_candidates, malicious_members
from fedmia.adversary.references import ReferenceRecipe
from fedmia.adversary.threats import QUERIER, SERVER, querier_access
from fedmia.adversary.views import client_rounds, global_rounds, load, malicious_rounds
from fedmia.attacks.base import (
    ACCESSES,
    PEER_UPLOADS,
    TRAJECTORY,
    AdversaryKnowledge,
    OutputGranularity,
    Samples,
    ShadowObservation,
    TargetView,
)
from fedmia.defenses import DefenseSpec
from fedmia.errors import FedmiaError
from fedmia.privacy import default_delta
from fedmia.release import ReleaseDefense, ReleaseSpec
from fedmia.rundir import FINAL_GLOBAL_MODEL, client_model_name, global_round_name
from fedmia.run import PreparedRun
from fedmia.seeding import round_seed
from fedmia.training import predict_logits, train_epochs

GLOBAL_SCOPE = "global"
#: Full access to a target that has no peers: the global model's rounds, a malicious client's.
ALONE = frozenset(ACCESSES) - {PEER_UPLOADS}


def client_scope(client: int) -> str:
    return f"client:{client}"


def malicious_scope(client: int) -> str:
    return f"malicious:{client}"


@dataclass(frozen=True)
class ScopeTask:
    """One scope to attack, as plain values (it pickles to attack workers): `adversary` is
    `server`, `querier` or `client:j`; `client` is the attacked client (server) or the
    malicious one; a server's client scope is attacked at that client's `delta`."""

    scope: str
    adversary: str = SERVER
    client: int | None = None
    upload_round: int = 0
    delta: float = 0.0


@dataclass(frozen=True)
class ScopeSetup:
    """A scope ready to attack."""

    target: TargetView
    #: The target itself, for the evaluator's utility numbers (attacks see only `target`).
    model: nn.Module
    members: np.ndarray
    candidates: np.ndarray
    membership: np.ndarray
    rng: np.random.Generator
    knowledge: AdversaryKnowledge
    recipe: ReferenceRecipe
    delta: float
    shadow_seconds: float
    #: The release defense the querier's answers go through (None: raw outputs).
    release: ReleaseDefense | None = None


def _shadow_observation(run: PreparedRun, model: nn.Module, shadow_in: np.ndarray,
                        shadow_out: np.ndarray) -> ShadowObservation:
    indices = np.concatenate([shadow_in, shadow_out])
    logits = predict_logits(model, run.images(indices), run.config.device)
    if not np.isfinite(logits).all():
        raise FedmiaError(f"the adversary's shadow model diverged (non-finite outputs) when trained like "
                          f"the clients (lr {run.config.lr:g}, batch size {run.config.batch_size}), so "
                          "no attack can be calibrated; rerun with a smaller --lr or a larger --batch-size")
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


def assumed_defense(run: PreparedRun) -> DefenseSpec:
    """The defense the adversary assumes for the global model: the clients' one when they all
    share it, otherwise none (the strongest assumption it can make of a mixed federation)."""
    specs = set((spec.name, tuple(sorted(spec.params.items()))) for spec in run.config.defenses)
    return run.config.defenses[0] if len(specs) == 1 else DefenseSpec()


def samples_of(run: PreparedRun, indices: np.ndarray) -> Samples:
    return Samples(run.images(indices), run.labels(indices), indices)


def _knowledge(run: PreparedRun, shadow: ShadowObservation, seed: int,
               own_data: Samples | None = None) -> AdversaryKnowledge:
    return AdversaryKnowledge(run.dataset.num_classes, (shadow,), (), samples_of(run, run.split.population),
                              own_data, run.plan, seed)


def _timed_shadow(run: PreparedRun, start: nn.Module, size: int, epochs: int,
                  seed: int) -> tuple[ShadowObservation, float]:
    started = time.perf_counter()
    shadow = train_shadow(run, start, size, epochs, seed)
    return shadow, time.perf_counter() - started


def setup_global(run: PreparedRun, task: ScopeTask, records: list[dict[str, Any]],
                 needs: frozenset[str]) -> ScopeSetup:
    """The final global model, for the server (`global`) or the querier (`querier`): the same
    candidates and shadow, different access."""
    config = run.config
    members = run.split.members
    rng = np.random.default_rng(round_seed(config.seed, 1_000_004))
    indices, membership = balanced_eval_set(members, run.split.nonmembers, run.dataset.labels, rng)
    model = load(run, FINAL_GLOBAL_MODEL)
    release = None
    if task.adversary == QUERIER:
        granularity = OutputGranularity.parse(config.querier_output)
        release = fitted_release(run, model, round_seed(config.seed, 1_000_006))
        target = TargetView(model, querier_access(granularity), granularity=granularity, device=config.device,
                            release=None if release is None else release.transform)
    else:
        rounds = global_rounds(run, records) if TRAJECTORY in needs else ()
        target = TargetView(model, ALONE, rounds=rounds, device=config.device)
    shadow, seconds = _timed_shadow(run, run.new_model(), len(members), config.rounds * config.local_epochs,
                                    round_seed(config.seed, 1_000_003))
    recipe = ReferenceRecipe(None, tuple(range(1, config.rounds + 1)), assumed_defense(run), len(members))
    return ScopeSetup(target, model, members, indices, membership, rng,
                      _knowledge(run, shadow, round_seed(config.seed, 1_000_005)), recipe,
                      default_delta(len(members)), seconds, release)


def fitted_release(run: PreparedRun, model: nn.Module, seed: int) -> ReleaseDefense | None:
    """The run's release defense, fitted by whoever releases the final model: on the model's
    outputs for the clients' records (it trained on them) and for the public pool (it did
    not). The evaluation's non-members are never shown to it."""
    if run.config.release == "none":
        return None
    release = ReleaseSpec.parse(run.config.release).build()
    members, public = run.split.members, run.split.public
    device = run.config.device
    release.fit(predict_logits(model, run.images(members), device), predict_logits(model, run.images(public), device),
                run.labels(members), run.labels(public), seed)
    return release


def setup_client(run: PreparedRun, task: ScopeTask, records: list[dict[str, Any]],
                 needs: frozenset[str]) -> ScopeSetup:
    """Client k's last upload (sent in `task.upload_round`), seen by the server."""
    config, client = run.config, task.client
    assert client is not None
    members = run.split.clients[client]
    rng = np.random.default_rng(round_seed(config.seed, 2_000_004, client))
    indices, membership = balanced_eval_set(members, run.split.nonmembers, run.dataset.labels, rng)
    model = load(run, client_model_name(client))
    rounds = client_rounds(run, client, records, PEER_UPLOADS in needs) if TRAJECTORY in needs else ()
    target = TargetView(model, frozenset(ACCESSES), rounds=rounds, device=config.device)
    start = global_round_name(task.upload_round - 1)
    shadow, seconds = _timed_shadow(run, load(run, start), len(members), config.local_epochs,
                                    round_seed(config.seed, 2_000_003, client))
    recipe = ReferenceRecipe(start, (task.upload_round,), config.defenses[client], len(members))
    return ScopeSetup(target, model, members, indices, membership, rng,
                      _knowledge(run, shadow, round_seed(config.seed, 2_000_005, client)), recipe,
                      task.delta, seconds)


def setup_malicious(run: PreparedRun, task: ScopeTask, records: list[dict[str, Any]],
                    needs: frozenset[str]) -> ScopeSetup:
    """Malicious client j against the other clients' data: the global models it received, its
    own data as known members (its reference models train on it beside the population)."""
    config, client = run.config, task.client
    assert client is not None
    members = malicious_members(run.split, client)
    indices, membership, rng = malicious_candidates(run.split, run.dataset.labels, config.seed, client)
    model = load(run, FINAL_GLOBAL_MODEL)
    rounds = malicious_rounds(run, client, records) if TRAJECTORY in needs else ()
    target = TargetView(model, ALONE, rounds=rounds, device=config.device)
    shadow, seconds = _timed_shadow(run, run.new_model(), len(members), config.rounds * config.local_epochs,
                                    round_seed(config.seed, 4_000_003, client))
    own = samples_of(run, run.split.clients[client])
    recipe = ReferenceRecipe(None, tuple(range(1, config.rounds + 1)), assumed_defense(run), len(members),
                             tuple(int(i) for i in own.indices))
    return ScopeSetup(target, model, members, indices, membership, rng,
                      _knowledge(run, shadow, round_seed(config.seed, 4_000_005, client), own), recipe,
                      default_delta(len(members)), seconds)


def setup_scope(run: PreparedRun, task: ScopeTask, records: list[dict[str, Any]],
                needs: frozenset[str] = frozenset(ACCESSES)) -> ScopeSetup:
    """The scope of `task`; `needs` (the accesses its attacks require) spares loading the
    rounds' models, and the peers' uploads, where no attack reads them."""
    if task.adversary.startswith("client:"):
        return setup_malicious(run, task, records, needs)
    if task.client is None:
        return setup_global(run, task, records, needs)
    return setup_client(run, task, records, needs)
