"""Client partitioning through Flower Datasets' partitioners.

The member pool is wrapped in a Hugging Face `Dataset` (labels plus each sample's pool index)
so that the partitioners work on it unchanged; each partition is read back as pool indices.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from fedmia.errors import FedmiaError

PARTITION_HELP = "iid, dirichlet:ALPHA (e.g. dirichlet:0.5) or classes:K (e.g. classes:2)"


@dataclass(frozen=True)
class PartitionSpec:
    """How the member pool is spread over clients: `iid`, `dirichlet` (alpha) or `classes` (k)."""

    kind: str
    value: float | None = None

    @classmethod
    def parse(cls, text: str) -> PartitionSpec:
        kind, _, raw = text.partition(":")
        if kind == "iid" and not raw:
            return cls("iid")
        if kind in ("dirichlet", "classes") and raw:
            try:
                value = float(raw) if kind == "dirichlet" else int(raw)
            except ValueError:
                value = -1
            if value > 0 and math.isfinite(value):
                return cls(kind, value)
        raise FedmiaError(f"bad --partition {text!r}; use {PARTITION_HELP}")

    def __str__(self) -> str:
        if self.kind == "iid":
            return "iid"
        value = self.value if self.kind == "dirichlet" else int(self.value or 0)
        return f"{self.kind}:{value}"


def _partitioner(spec: PartitionSpec, num_clients: int, seed: int):
    from flwr_datasets.partitioner import (
        DirichletPartitioner,
        IidPartitioner,
        PathologicalPartitioner,
    )

    if spec.kind == "iid":
        return IidPartitioner(num_partitions=num_clients)
    if spec.kind == "dirichlet":
        return DirichletPartitioner(
            num_partitions=num_clients,
            partition_by="label",
            alpha=float(spec.value or 0),
            min_partition_size=1,
            self_balancing=False,
            shuffle=True,
            seed=seed,
        )
    return PathologicalPartitioner(
        num_partitions=num_clients,
        partition_by="label",
        num_classes_per_partition=int(spec.value or 0),
        class_assignment_mode="first-deterministic",
        shuffle=True,
        seed=seed,
    )


def _run_partitioner(spec: PartitionSpec, num_clients: int, pool_indices: np.ndarray,
                     labels: np.ndarray, seed: int) -> list[np.ndarray]:
    """One sorted index array per partition. The pool is shuffled first: the IID partitioner
    cuts contiguous shards, which would follow the pool's order (a label-sorted pool would
    give every "IID" client a single label). The Dirichlet partitioner warns on each of its
    retries; its final failure becomes one FedmiaError instead."""
    from datasets import Dataset

    partitioner = _partitioner(spec, num_clients, seed)
    order = np.random.default_rng(seed).permutation(len(pool_indices))
    partitioner.dataset = Dataset.from_dict(
        {"index": pool_indices[order].astype(np.int64), "label": labels[order].astype(np.int64)}
    )
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module="flwr_datasets")
            return [np.sort(np.asarray(partitioner.load_partition(k)["index"], dtype=np.int64))
                    for k in range(num_clients)]
    except ValueError as error:
        raise FedmiaError(f"cannot partition with {spec}: {str(error).rstrip('.')}; try a larger "
                          "alpha or fewer clients") from None


def partition_indices(
    pool_indices: np.ndarray,
    labels: np.ndarray,
    num_clients: int,
    spec: PartitionSpec,
    seed: int,
) -> list[np.ndarray]:
    """Split `pool_indices` (with their `labels`) into one sorted index array per client."""
    if num_clients > len(pool_indices):
        raise FedmiaError(
            f"{num_clients} clients but only {len(pool_indices)} member samples; "
            "lower --clients or use a larger dataset"
        )
    if spec.kind == "classes" and spec.value and spec.value > len(np.unique(labels)):
        raise FedmiaError(
            f"classes:{int(spec.value)} asks for more classes per client than the "
            f"{len(np.unique(labels))} present; lower K"
        )
    parts = _run_partitioner(spec, num_clients, pool_indices, labels, seed)
    empty = [k for k, part in enumerate(parts) if len(part) == 0]
    if empty:
        raise FedmiaError(
            f"partition {spec} left clients {empty[:5]} without data; "
            "use a larger alpha, more classes per client, or fewer clients"
        )
    return parts
