"""What each adversary saw over the rounds, rebuilt from the run directory as `RoundView`s.

- the server, of client k: each kept upload of client k, the global model it started from, and
  the other clients' kept uploads of the same round;
- the server, of the global model: each round's global model and the one before it;
- malicious client j: the global models it received (those of the rounds it was sampled in,
  then the final one), each against the one it received before.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from fedmia.adversary.uploads import KeepPolicy
from fedmia.attacks.base import RoundView
from fedmia.rundir import FINAL_GLOBAL_MODEL, client_model_name, global_round_name, upload_name
from fedmia.run import PreparedRun


def uploads_by_round(records: list[dict[str, Any]]) -> dict[int, list[int]]:
    """The clients whose upload of each round went to the server (stopped clients sent none)."""
    return {int(record["round"]): sorted(int(report["client"]) for report in record["clients"]
                                         if not report.get("stopped"))
            for record in records}


def client_rounds(run: PreparedRun, client: int, records: list[dict[str, Any]],
                  with_peers: bool = True) -> tuple[RoundView, ...]:
    """Client `client`'s uploads as the server kept them: every round the keep policy kept,
    and the last upload (always kept); with the other clients' uploads of those rounds when
    `with_peers` (K clients' scopes load K^2 uploads a round, so only when an attack reads them)."""
    policy = KeepPolicy.parse(run.config.keep_uploads)
    uploads = uploads_by_round(records)
    rounds = [r for r, clients in sorted(uploads.items()) if client in clients]
    views = []
    for server_round in rounds:
        last = server_round == rounds[-1]
        if not (policy.keeps(server_round) or last):
            continue
        name = upload_name(client, server_round) if policy.keeps(server_round) else client_model_name(client)
        others = tuple(load(run, upload_name(other, server_round)) for other in uploads[server_round]
                       if other != client and policy.keeps(server_round) and with_peers)
        views.append(RoundView(server_round, load(run, global_round_name(server_round - 1)),
                               load(run, name), others))
    return tuple(views)


def global_rounds(run: PreparedRun, records: list[dict[str, Any]]) -> tuple[RoundView, ...]:
    """Every round's global model against the one before it."""
    rounds = sorted(int(record["round"]) for record in records if int(record["round"]) > 0)
    return tuple(RoundView(r, load(run, global_round_name(r - 1)), load(run, global_round_name(r)))
                 for r in rounds)


def received_models(client: int, records: list[dict[str, Any]]) -> list[tuple[int, str]]:
    """(round, model name) of each global model client `client` received: the one each round
    it was sampled in started from, then the final one (every client gets the trained model)."""
    sampled = [r for r, clients in sorted(uploads_by_round(records).items()) if client in clients]
    last = max((int(record["round"]) for record in records), default=0)
    return [(r - 1, global_round_name(r - 1)) for r in sampled] + [(last, FINAL_GLOBAL_MODEL)]


def malicious_rounds(run: PreparedRun, client: int, records: list[dict[str, Any]]) -> tuple[RoundView, ...]:
    """Each global model client `client` received against the one it received before."""
    received = [(server_round, load(run, name)) for server_round, name in received_models(client, records)]
    return tuple(RoundView(server_round, before, after)
                 for (_, before), (server_round, after) in zip(received, received[1:]))


def load(run: PreparedRun, name: str) -> nn.Module:
    return run.model_from_state(run.rundir.load_model(name))
