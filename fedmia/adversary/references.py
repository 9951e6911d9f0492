"""The adversary's reference models: trained the way the target was trained, with known members.

A `ReferenceRecipe` says how a scope's target came to be: the model it started from (the seeded
initial model for the final global model, the round's global model for a client's upload), the
rounds of local training, the defense the adversary assumes (the client's own, since the server
configured it), and how many records the target trained on. The bank trains `count` models by
that recipe in pairs: each pair splits a shuffled pool into two halves, one per model, so every
record of the pool is IN for one model of the pair and OUT for the other.

- offline: the pool is the adversary's population (and a malicious client's own data); the
  candidates are OUT for every model;
- online: the pool holds the candidate records (the adversary knows them, not their
  membership), topped up with population records to twice the target's size, so each
  candidate is IN for about half of the models.

Banks are cached in the run directory under a content key (recipe, pool, seed, training
settings, the start model's bytes), so a second `fedmia attack RUN_DIR` loads them instead of
training again, and scopes that would train the same bank share it. Each file is written
under a temporary name and renamed, so a parallel attack worker never reads a partial one.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fedmia.attacks.base import ReferenceModel
from fedmia.defenses import ClientData, DefenseSpec, RoundContext
from fedmia.run import PreparedRun
from fedmia.seeding import round_seed

MEMBERS_KEY = "__members__"
REFERENCES_FOLDER = "references"


@dataclass(frozen=True)
class ReferenceRecipe:
    """How the target was trained: from `start` (a model file name in the run directory, or
    None for the run's initial model) for `rounds`, with `defense`, on `target_size` records.
    `own_data` are records the adversary holds besides its population (a malicious client's
    own), which its reference models train on too."""

    start: str | None
    rounds: tuple[int, ...]
    defense: DefenseSpec
    target_size: int
    own_data: tuple[int, ...] = ()


def reference_pool(candidates: np.ndarray, population: np.ndarray, target_size: int, online: bool,
                   rng: np.random.Generator) -> np.ndarray:
    """The records the bank's members are drawn from (see the module docstring)."""
    if not online:
        return np.sort(population)
    top_up = max(0, 2 * target_size - len(candidates))
    extra = rng.permutation(population)[:top_up]
    return np.sort(np.concatenate([candidates, extra]))


def paired_memberships(pool: np.ndarray, count: int, target_size: int,
                       rng: np.random.Generator) -> list[np.ndarray]:
    """`count` member sets of min(target_size, half the pool) records each, in complementary
    pairs: each pair splits one shuffled pool into halves."""
    size = max(1, min(target_size, len(pool) // 2))
    sets: list[np.ndarray] = []
    while len(sets) < count:
        order = rng.permutation(pool)
        half = len(pool) // 2
        sets.extend(np.sort(part[:size]) for part in (order[:half], order[half:2 * half]))
    return sets[:count]


def train_reference(run: PreparedRun, recipe: ReferenceRecipe, members: np.ndarray, seed: int) -> torch.nn.Module:
    """One reference model: the recipe's start model trained on `members` for its rounds, with
    its defense, exactly as a client trains (`Defense.prepare` then `train_round` per round)."""
    start = run.rundir.load_model(recipe.start) if recipe.start else None
    model = run.model_from_state(start) if start is not None else run.new_model()
    public = run.split.public
    data = ClientData(-1, run.images(members), run.labels(members), run.dataset.num_classes,
                      run.images(public), run.labels(public))
    defense = recipe.defense.build()
    torch.manual_seed(seed)
    defense.prepare(data, run.prepare_context(-1, seed))
    for server_round in recipe.rounds:
        context = RoundContext(server_round, run.config.rounds, run.plan, round_seed(seed, server_round))
        defense.train_round(model, data, context)
    return model


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def bank_key(run: PreparedRun, recipe: ReferenceRecipe, pool: np.ndarray, count: int, online: bool,
             seed: int) -> str:
    """A content key: anything that changes the bank's models changes the key."""
    c = run.config
    start = _file_digest(run.rundir.model_path(recipe.start)) if recipe.start else "init"
    content = {
        "start": start, "rounds": list(recipe.rounds), "defense": recipe.defense.name,
        "defense_params": recipe.defense.params, "target_size": recipe.target_size,
        "own_data": hashlib.sha256(np.asarray(recipe.own_data, dtype=np.int64).tobytes()).hexdigest(),
        "pool": hashlib.sha256(np.ascontiguousarray(pool, dtype=np.int64).tobytes()).hexdigest(),
        "count": count, "online": online, "seed": seed, "dataset": c.dataset, "model": c.model,
        "run_seed": c.seed, "total_rounds": c.rounds, "local_epochs": c.local_epochs,
        "batch_size": c.batch_size, "lr": c.lr, "dp_compatible": c.dp_compatible_model,
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _save_bank(path: Path, references: list[ReferenceModel]) -> None:
    tensors = {}
    for number, reference in enumerate(references):
        for name, tensor in reference.model.state_dict().items():
            tensors[f"ref{number}.{name}"] = tensor.detach().cpu().contiguous()
        tensors[f"ref{number}.{MEMBERS_KEY}"] = torch.as_tensor(reference.members, dtype=torch.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.stem}.{os.getpid()}.partial.safetensors")
    save_file(tensors, str(partial))
    partial.replace(path)


def _load_bank(run: PreparedRun, path: Path, count: int) -> list[ReferenceModel]:
    tensors = load_file(str(path))
    references = []
    for number in range(count):
        prefix = f"ref{number}."
        state = {key[len(prefix):]: value for key, value in tensors.items()
                 if key.startswith(prefix) and key != prefix + MEMBERS_KEY}
        references.append(ReferenceModel(run.model_from_state(state), tensors[prefix + MEMBERS_KEY].numpy()))
    return references


def reference_bank(run: PreparedRun, recipe: ReferenceRecipe, candidates: np.ndarray,
                   count: int, online: bool, seed: int) -> tuple[tuple[ReferenceModel, ...], bool]:
    """(`count` reference models, whether they came from the cache). Scopes with the same
    recipe, candidates and seed (the server's `global` and the querier's) share one bank."""
    rng = np.random.default_rng(seed)
    population = np.concatenate([run.split.population, np.asarray(recipe.own_data, dtype=np.int64)])
    pool = reference_pool(candidates, population, recipe.target_size, online, rng)
    path = run.rundir.path / REFERENCES_FOLDER / f"{bank_key(run, recipe, pool, count, online, seed)}.safetensors"
    if path.is_file():
        try:
            return tuple(_load_bank(run, path, count)), True
        except (SafetensorError, OSError, KeyError, RuntimeError):
            path.unlink()
    memberships = paired_memberships(pool, count, recipe.target_size, rng)
    references = [ReferenceModel(train_reference(run, recipe, members, round_seed(seed, number)), members)
                  for number, members in enumerate(memberships)]
    _save_bank(path, references)
    return tuple(references), False
