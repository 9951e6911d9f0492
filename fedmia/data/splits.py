"""The privacy split: disjoint pools for members, non-members, the adversary and testing.

- members: each client's training data (the union is the global scope's member set);
- non-members: held out, same distribution, never seen by any client (to evaluate attacks);
- population: the adversary's own data (shadow/reference models, calibration);
- test: utility of the global and per-client models;
- public (optional, `public_size`): data every client may use besides its own, e.g. the
  reference set a distillation defense labels with its teacher; carved first, so a run without
  one splits exactly as before.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split

from fedmia.data.partition import PartitionSpec, partition_indices
from fedmia.errors import FedmiaError


@dataclass(frozen=True)
class SplitFractions:
    """Fractions of the whole pool given to each part; they must sum to at most 1."""

    members: float = 0.4
    nonmembers: float = 0.2
    population: float = 0.2
    test: float = 0.2

    def __post_init__(self) -> None:
        values = (self.members, self.nonmembers, self.population, self.test)
        if min(values) <= 0 or sum(values) > 1 + 1e-9:
            raise FedmiaError(
                f"split fractions {values} must be positive and sum to at most 1; fix [split]"
            )


@dataclass(frozen=True)
class PrivacySplit:
    """Index arrays into the dataset pool; all pools are pairwise disjoint."""

    clients: tuple[np.ndarray, ...]
    nonmembers: np.ndarray
    population: np.ndarray
    test: np.ndarray
    fractions: SplitFractions = field(default_factory=SplitFractions)
    public: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __post_init__(self) -> None:
        pools = [*self.clients, self.nonmembers, self.population, self.test, self.public]
        everything = np.concatenate(pools)
        if len(np.unique(everything)) != len(everything) or (everything < 0).any():
            raise FedmiaError("the split's pools overlap or hold negative indices; "
                              "the manifest was edited or is corrupt, so start a new run")

    @property
    def members(self) -> np.ndarray:
        return np.sort(np.concatenate(self.clients))

    def to_dict(self) -> dict[str, Any]:
        return {
            "fractions": asdict(self.fractions),
            "clients": [part.tolist() for part in self.clients],
            "nonmembers": self.nonmembers.tolist(),
            "population": self.population.tolist(),
            "test": self.test.tolist(),
            "public": self.public.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrivacySplit:
        def as_indices(values: list[int]) -> np.ndarray:
            return np.asarray(values, dtype=np.int64)

        return cls(
            clients=tuple(as_indices(part) for part in data["clients"]),
            nonmembers=as_indices(data["nonmembers"]),
            population=as_indices(data["population"]),
            test=as_indices(data["test"]),
            fractions=SplitFractions(**data["fractions"]),
            public=as_indices(data.get("public", [])),
        )


def _carve(indices: np.ndarray, labels: np.ndarray, size: int,
           seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Take `size` indices out of `indices` (returned sorted, the rest shuffled), stratified by
    label when scikit-learn can: every class needs two samples, and each side at least one
    sample per class."""
    present = labels[indices]
    counts = np.bincount(present)
    num_classes = int((counts > 0).sum())
    stratifiable = counts[counts > 0].min() >= 2 and min(size, len(indices) - size) >= num_classes
    taken, rest = train_test_split(indices, train_size=size, random_state=seed,
                                   stratify=present if stratifiable else None)
    return np.sort(taken), rest


#: Seed offsets of the test, population and non-member carves (the pool draw uses the next one,
#: the public pool the one after).
POOL_OFFSETS = (0, 1, 2)
PUBLIC_OFFSET = len(POOL_OFFSETS) + 1


def make_privacy_split(
    labels: np.ndarray,
    num_clients: int,
    partition: PartitionSpec,
    seed: int,
    fractions: SplitFractions | None = None,
    pool_size: int = 0,
    public_size: int = 0,
) -> PrivacySplit:
    """Deterministic in (labels, num_clients, partition, seed, fractions, pool_size, public_size).
    `pool_size` > 0 first draws that many samples, stratified by label, and splits only them:
    a small, leaky federation from a large dataset. `public_size` > 0 then sets that many
    aside as the public pool, and the fractions apply to the rest."""
    fractions = fractions or SplitFractions()
    pool = np.arange(len(labels), dtype=np.int64)
    if 0 < pool_size < len(labels):
        pool, _ = _carve(pool, labels, pool_size, seed + len(POOL_OFFSETS))
    public = np.zeros(0, dtype=np.int64)
    if public_size > 0:
        if public_size > len(pool) // 2:
            raise FedmiaError(f"public_size {public_size} would take more than half of the {len(pool)} "
                              "samples; lower --public-size")
        public, pool = _carve(pool, labels, public_size, seed + PUBLIC_OFFSET)
        pool = np.sort(pool)
    total = len(pool)
    sizes = [int(total * f) for f in (fractions.test, fractions.population, fractions.nonmembers)]
    if min(sizes) < 2 or int(total * fractions.members) < num_clients:
        raise FedmiaError(
            f"{total} samples are too few for {num_clients} clients with split {vars(fractions)}; "
            "lower --clients or use a larger dataset"
        )
    rest = pool
    pools = []
    for offset, size in zip(POOL_OFFSETS, sizes):
        taken, rest = _carve(rest, labels, size, seed + offset)
        pools.append(taken)
    test, population, nonmembers = pools
    member_pool = np.sort(rest[: int(total * fractions.members)])
    clients = partition_indices(member_pool, labels[member_pool], num_clients, partition, seed)
    return PrivacySplit(tuple(clients), nonmembers, population, test, fractions, public)
