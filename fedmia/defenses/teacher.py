"""A teacher: the run's architecture trained on the client's own records, as distillation and
seed 000's synthesis defense both need (the seed trains it with the target's architecture).
It is trained once per client and kept in the preparation cache."""

from __future__ import annotations

import hashlib
from dataclasses import asdict

import numpy as np
import torch
from torch import nn

from fedmia.defenses.base import ClientData, PrepareContext
from fedmia.defenses.cache import Prepared, PreparationRecord, content_key
from fedmia.training import accuracy, predict_logits, train_epochs


def weights_digest(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def train_teacher(data: ClientData, setup: PrepareContext, epochs: int) -> tuple[nn.Module, PreparationRecord]:
    """The teacher for `data`, from the cache when it was trained before."""
    model = setup.new_model()
    key = content_key("teacher", images=data.images, labels=data.labels, initial=weights_digest(model),
                      plan=asdict(setup.plan), epochs=epochs, seed=setup.seed)

    def build(folder) -> Prepared:
        stats = train_epochs(model, data.images, data.labels, setup.plan, setup.seed, epochs=epochs)
        details = {"epochs": epochs, "seconds": stats.seconds,
                   "train_accuracy": accuracy(model, data.images, data.labels, setup.plan.device)}
        if data.public_labels is not None and len(data.public_labels):
            details["public_accuracy"] = accuracy(model, data.public_images, data.public_labels, setup.plan.device)
        return Prepared({name: t.detach().cpu().numpy() for name, t in model.state_dict().items()}, details)

    prepared, record = setup.cache.get_or_build("teacher", key, build)
    model.load_state_dict({name: torch.as_tensor(array) for name, array in prepared.arrays.items()})
    return model.to(setup.plan.device).eval(), record


@torch.no_grad()
def penultimate_features(model: nn.Module, images: np.ndarray, device: str, batch_size: int = 1024) -> np.ndarray:
    """The input of the model's last linear layer: the teacher's feature space, where a
    memorization check compares synthetic and private samples."""
    head = [module for module in model.modules() if isinstance(module, nn.Linear)][-1]
    captured: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda module, args: captured.append(args[0].flatten(1).cpu()))
    try:
        predict_logits(model, images, device, batch_size)
    finally:
        handle.remove()
    return torch.cat(captured).double().numpy()


def soft_labels(teacher: nn.Module, images: np.ndarray, temperature: float, device: str) -> np.ndarray:
    """The teacher's softmax at `temperature`, as float32 probability vectors."""
    logits = torch.as_tensor(predict_logits(teacher, images, device))
    return torch.softmax(logits / temperature, dim=1).float().numpy()
