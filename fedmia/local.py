"""One client's round, Flower-free: rebuild the defense from its saved state, train the global
model on the client's members, and return the upload, the report and the state to keep, with
the seconds each part took (what the simulation's overhead breakdown compares against)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
from torch import nn

from fedmia.adversary.active import gradient_ascent
from fedmia.adversary.candidates import malicious_candidates
from fedmia.defenses import RoundContext, RoundReport
from fedmia.run import PreparedRun, round_seed
from fedmia.timing import RunTimer

#: The role whose upload is pushed up its candidates' loss after the honest round.
ACTIVE_ROLE = "malicious:active"


@dataclass(frozen=True)
class LocalResult:
    state: dict[str, torch.Tensor]
    report: RoundReport
    defense_state: dict[str, Any]
    #: Seconds per part of the round: "data" (the client's records, the defense's preparation),
    #: "rebuild" (defense and model from their states), "compute" (local training).
    seconds: dict[str, float]


def report_to_dict(client: int, report: RoundReport, seconds: dict[str, float] | None = None) -> dict[str, Any]:
    """The report as JSON values, with the client id, as the server records it; its `seconds`
    become a dict: the defense's own training time ("train") and the round's parts."""
    return {"client": client, **asdict(report), "seconds": {"train": report.seconds, **(seconds or {})}}


def run_local_round(run: PreparedRun, client: int, global_state: dict[str, torch.Tensor],
                    server_round: int, defense_state: dict[str, Any] | None,
                    timer: RunTimer | None = None) -> LocalResult:
    """Train client `client` for one round; `defense_state` is None on its first round. The
    parts' seconds add to `timer`'s (the ClientApp's, which also times the message's parts)."""
    timer = timer or RunTimer()
    with timer.phase("rebuild"):
        defense = run.config.defenses[client].build()
    with timer.phase("data"):
        data = run.client_data(client)
        defense.prepare(data, run.prepare_context(client))
    seed = round_seed(run.config.seed, client, server_round)
    torch.manual_seed(seed)
    with timer.phase("rebuild"):
        if defense_state is not None:
            defense.load_state_dict(defense_state)
        model = run.model_from_state(global_state)
    context = RoundContext(server_round, run.config.rounds, run.plan, seed)
    with timer.phase("compute"):
        report = defense.train_round(model, data, context)
        if run.config.roles[client] == ACTIVE_ROLE and not report.stopped:
            report = ascend_candidates(run, client, model, report)
    return LocalResult(model.state_dict(), report, defense.state_dict(), timer.seconds())


def ascend_candidates(run: PreparedRun, client: int, model: nn.Module, report: RoundReport) -> RoundReport:
    """The active attack: gradient ascent on the client's candidate records (their indices
    only, never their membership); the report keeps the honest training's numbers and adds
    the ascent's under `details["active_ascent"]`."""
    indices, _, _ = malicious_candidates(run.split, run.dataset.labels, run.config.seed, client)
    stats = gradient_ascent(model, run.images(indices), run.labels(indices), device=run.plan.device)
    return replace(report, details={**report.details, "active_ascent": stats.to_dict()})
