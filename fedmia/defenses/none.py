"""No defense: plain local SGD, the baseline every defense is compared with."""

from __future__ import annotations

from torch import nn

from fedmia.defenses.base import ClientData, Defense, RoundContext, RoundReport
from fedmia.training import train_epochs


class NoDefense(Defense):
    name = "none"

    def train_round(self, model: nn.Module, data: ClientData, context: RoundContext) -> RoundReport:
        stats = train_epochs(model, data.images, data.labels, context.plan, context.seed)
        return RoundReport(len(data), stats.loss, stats.accuracy, stats.seconds)
