"""`dpsgd`: record-level DP-SGD through Opacus (per-sample clipping to C, Poisson sampling,
Gaussian noise sigma * C), with the client's budget over the whole run (see `private`)."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedmia.defenses.base import ClientData, RoundContext
from fedmia.defenses.private import PrivateDefense, StepPlan, TrainOutcome
from fedmia.training import make_optimizer

GRAD_SAMPLE_MODE = "hooks"

# Opacus's reminder that its RNG is not cryptographically secure (simulation, not deployment),
# and torch's note on backward hooks over inputs that need no gradient: both expected here.
warnings.filterwarnings("ignore", message="Secure RNG turned off")
warnings.filterwarnings("ignore", message="Full backward hook is firing")


class DPSGD(PrivateDefense):
    name = "dpsgd"

    def train_private(self, model: nn.Module, data: ClientData, context: RoundContext,
                      plan: StepPlan) -> TrainOutcome:
        device = context.plan.device
        model.to(device).train()
        generator = torch.Generator().manual_seed(context.seed)
        loader = DataLoader(TensorDataset(torch.as_tensor(data.images), torch.as_tensor(data.labels)),
                            batch_size=context.plan.batch_size, generator=generator)
        engine = PrivacyEngine(accountant="rdp")
        private_model, optimizer, private_loader = engine.make_private(
            module=model, optimizer=make_optimizer(model, context.plan), data_loader=loader,
            noise_multiplier=plan.noise_multiplier, max_grad_norm=plan.max_grad_norm,
            poisson_sampling=True, grad_sample_mode=GRAD_SAMPLE_MODE, noise_generator=generator)
        losses, correct, seen = [], 0, 0
        for _ in range(context.plan.local_epochs):
            for images, labels in private_loader:
                images, labels = images.to(device), labels.to(device)
                optimizer.zero_grad(set_to_none=True)
                logits = private_model(images)
                loss = nn.functional.cross_entropy(logits, labels) if len(labels) else logits.sum() * 0
                loss.backward()
                optimizer.step()
                if len(labels):
                    losses.append(float(loss.detach()) * len(labels))
                    correct += int((logits.argmax(1) == labels).sum())
                    seen += len(labels)
        private_model._close()
        return TrainOutcome(float(np.sum(losses) / max(seen, 1)), correct / max(seen, 1),
                            {"grad_sample_mode": GRAD_SAMPLE_MODE})
