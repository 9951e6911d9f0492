"""A prepared run: config, data, split and run directory, shared by the server and the clients.

The server prepares the run once (loads and checks the data, makes the split, writes
config.toml and manifest.json). Clients, possibly in other processes, load the same run back
from the run directory once per process: the manifest's indices are the single source of truth
for who holds which sample.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fedmia.config import RunConfig, load_run_config
from fedmia.data import ArrayDataset, PrivacySplit, load_dataset, make_privacy_split
from fedmia.defenses import ClientData, PrepareContext, PreparationCache
from fedmia.models import build_model
from fedmia.rundir import RunDirectory
from fedmia.seeding import round_seed
from fedmia.training import TrainingPlan

#: The key of the seed a client's defense prepares with.
PREPARATION_KEY = 4_000_001

RECORDED_PACKAGES = ("fedmia", "flwr", "flwr-datasets", "ray", "torch", "torchvision", "opacus",
                     "numpy", "scikit-learn", "scipy", "dp-accounting")


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    versions["python"] = platform.python_version()
    return versions


@dataclass(frozen=True)
class PreparedRun:
    config: RunConfig
    dataset: ArrayDataset
    split: PrivacySplit
    rundir: RunDirectory

    @property
    def plan(self) -> TrainingPlan:
        c = self.config
        return TrainingPlan(local_epochs=c.local_epochs, batch_size=c.batch_size, lr=c.lr,
                            device=c.device)

    def new_model(self) -> nn.Module:
        """The run's architecture with its seeded initial weights."""
        return build_model(self.config.model, self.dataset.input_shape, self.dataset.num_classes,
                           dp_compatible=self.config.dp_compatible_model, seed=self.config.seed)

    def model_from_state(self, state: dict[str, torch.Tensor]) -> nn.Module:
        model = self.new_model()
        model.load_state_dict(state)
        return model

    def images(self, indices: np.ndarray) -> np.ndarray:
        return self.dataset.images[indices]

    def labels(self, indices: np.ndarray) -> np.ndarray:
        return self.dataset.labels[indices]

    def client_data(self, client: int) -> ClientData:
        """The client's records and the run's public pool."""
        indices, public = self.split.clients[client], self.split.public
        return ClientData(client, self.images(indices), self.labels(indices), self.dataset.num_classes,
                          self.images(public), self.labels(public))

    def prepare_context(self, client: int, seed: int | None = None) -> PrepareContext:
        """What client `client`'s defense prepares with; its seed is the same every round, so
        the preparation cache finds the work again."""
        seed = round_seed(self.config.seed, client, PREPARATION_KEY) if seed is None else seed
        return PrepareContext(self.plan, seed, PreparationCache(self.config.cache_dir), self.new_model)

    def manifest(self) -> dict[str, Any]:
        c = self.config
        model = self.new_model()
        return {
            "dataset": {"name": self.dataset.name, "size": len(self.dataset),
                        "input_shape": list(self.dataset.input_shape),
                        "num_classes": self.dataset.num_classes},
            "model": {"name": c.model, "dp_compatible": c.dp_compatible_model,
                      "parameters": sum(p.numel() for p in model.parameters()),
                      "arguments": {"input_shape": list(self.dataset.input_shape),
                                    "num_classes": self.dataset.num_classes}},
            "seed": c.seed,
            "partition": c.partition,
            "packages": package_versions(),
            "split": self.split.to_dict(),
        }


def prepare_run(config: RunConfig) -> PreparedRun:
    """Load and check everything, then write config.toml and manifest.json; raises FedmiaError
    on bad input before any training starts."""
    dataset = load_dataset(config.dataset, Path(config.data_dir) if config.data_dir else None,
                           config.download)
    split = make_privacy_split(dataset.labels, config.clients, config.partition_spec, config.seed,
                               pool_size=config.dataset_size, public_size=config.public_size)
    run = PreparedRun(config, dataset, split, RunDirectory(config.out).create())
    run.rundir.write_text("config.toml", config.to_toml())
    run.rundir.write_json("manifest.json", run.manifest())
    run.rundir.reset_metrics()
    return run


@lru_cache(maxsize=4)
def load_prepared_run(path: str) -> PreparedRun:
    """The run a server prepared at `path`, loaded once per process (clients call this every
    round; only the first call reads the data)."""
    rundir = RunDirectory(path)
    config = load_run_config((rundir.path / "config.toml").read_text())
    dataset = load_dataset(config.dataset, Path(config.data_dir) if config.data_dir else None,
                           download=False)
    split = PrivacySplit.from_dict(rundir.read_json("manifest.json")["split"])
    return PreparedRun(config, dataset, split, rundir)


def sample_clients(num_clients: int, per_round: int, seed: int, server_round: int) -> list[int]:
    """The clients that train in `server_round`: all, or a seeded sample of `per_round`, so
    the same seed selects the same clients whatever ids the federation gave its nodes."""
    if per_round >= num_clients:
        return list(range(num_clients))
    rng = np.random.default_rng(round_seed(seed, 3_000_017, server_round))
    return sorted(int(c) for c in rng.choice(num_clients, per_round, replace=False))
