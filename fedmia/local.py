"""One client's round, Flower-free: rebuild the defense from its saved state, train the global
model on the client's members, and return the upload, the report and the state to keep."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

from fedmia.adversary.active import gradient_ascent
from fedmia.adversary.candidates import malicious_candidates
from fedmia.defenses import RoundContext, RoundReport
from fedmia.run import PreparedRun, round_seed

#: The role whose upload is pushed up its candidates' loss after the honest round.
ACTIVE_ROLE = "malicious:active"


@dataclass(frozen=True)
class LocalResult:
    state: dict[str, torch.Tensor]
    report: RoundReport
    defense_state: dict[str, Any]


def report_to_dict(client: int, report: RoundReport) -> dict[str, Any]:
    """The report as JSON values, with the client id, as the server records it."""
    return {"client": client, **asdict(report)}


def run_local_round(run: PreparedRun, client: int, global_state: dict[str, torch.Tensor],
                    server_round: int, defense_state: dict[str, Any] | None) -> LocalResult:
    """Train client `client` for one round; `defense_state` is None on its first round."""
    defense = run.config.defenses[client].build()
    data = run.client_data(client)
    defense.prepare(data, run.prepare_context(client))
    seed = round_seed(run.config.seed, client, server_round)
    torch.manual_seed(seed)
    if defense_state is not None:
        defense.load_state_dict(defense_state)
    model = run.model_from_state(global_state)
    context = RoundContext(server_round, run.config.rounds, run.plan, seed)
    report = defense.train_round(model, data, context)
    if run.config.roles[client] == ACTIVE_ROLE and not report.stopped:
        report = ascend_candidates(run, client, model, report)
    return LocalResult(model.state_dict(), report, defense.state_dict())


def ascend_candidates(run: PreparedRun, client: int, model: nn.Module, report: RoundReport) -> RoundReport:
    """The active attack: gradient ascent on the client's candidate records (their indices
    only, never their membership); the report keeps the honest training's numbers and adds
    the ascent's under `details["active_ascent"]`."""
    indices, _, _ = malicious_candidates(run.split, run.dataset.labels, run.config.seed, client)
    stats = gradient_ascent(model, run.images(indices), run.labels(indices), device=run.plan.device)
    return replace(report, details={**report.details, "active_ascent": stats.to_dict()})
