"""Threat models: who attacks, which scopes each attacks, and what each may see of a target.

- `server` (honest but curious): every upload of every round and every global model. Scopes
  `global` (the final global model, members = every client's data) and `client:k` (client k's
  uploads, members = client k's data). Full access: outputs, labels, weights, trajectories.
- `querier`: black-box queries to the final global model, at the granularity of
  `querier_output` (logits, top-k posteriors, or the label only). Scope `querier`.
- `client:j` (a client whose [[client]] role is malicious): the global models it received and
  its own data. Scope `malicious:j`, members = the union of the other clients' data. It holds
  the weights it received, so it has white-box and trajectory access to them, but sees no
  other client's upload (`peer-uploads`, which only the server has, and only of a client).

Every attack declares the accesses it requires (`MembershipAttack.requires`); an attack asked
of an adversary that cannot run it is a one-line error before anything trains.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedmia.attacks.base import ACCESSES, LABELS, OUTPUTS, PEER_UPLOADS, OutputGranularity
from fedmia.attacks.spec import AttackSpec
from fedmia.errors import FedmiaError

SERVER, QUERIER = "server", "querier"
MALICIOUS_PREFIX = "client:"
NAMED_ADVERSARIES = (SERVER, QUERIER)


@dataclass(frozen=True)
class ThreatModel:
    """One adversary: its name and the accesses it has to each of its targets."""

    name: str
    access: frozenset[str]

    def can_run(self, spec: AttackSpec) -> bool:
        return spec.build().requires <= self.access

    def missing(self, spec: AttackSpec) -> list[str]:
        return sorted(spec.build().requires - self.access)


def malicious_clients(roles: tuple[str, ...]) -> list[int]:
    return [client for client, role in enumerate(roles) if role.startswith("malicious")]


def querier_access(granularity: OutputGranularity) -> frozenset[str]:
    return frozenset({LABELS}) if granularity.label_only else frozenset({LABELS, OUTPUTS})


def threat_models(adversaries: tuple[str, ...], roles: tuple[str, ...],
                  querier_output: str) -> list[ThreatModel]:
    """The run's adversaries: the named ones it lists, then every malicious client."""
    granularity = OutputGranularity.parse(querier_output)
    malicious = malicious_clients(roles)
    if SERVER not in adversaries:
        raise FedmiaError(f"--adversaries {','.join(adversaries)} leaves out server, whose scopes (global, "
                          "client:k) every report is built on; write e.g. --adversaries server,querier")
    models = []
    for position, name in enumerate(adversaries):
        if name in adversaries[:position]:
            raise FedmiaError(f"adversary {name!r} is listed twice in --adversaries; list each once")
        if name == SERVER:
            models.append(ThreatModel(SERVER, frozenset(ACCESSES)))
        elif name == QUERIER:
            models.append(ThreatModel(QUERIER, querier_access(granularity)))
        elif name.startswith(MALICIOUS_PREFIX):
            raise FedmiaError(f"adversary {name!r}: malicious clients are set in the config file, not in "
                              '--adversaries; add a [[client]] group with its ids and role = "malicious"')
        else:
            raise FedmiaError(f"unknown adversary {name!r}; choose from {', '.join(NAMED_ADVERSARIES)} "
                              '(malicious clients come from [[client]] role = "malicious")')
    return models + [ThreatModel(f"{MALICIOUS_PREFIX}{client}", frozenset(ACCESSES) - {PEER_UPLOADS})
                     for client in malicious]


def adversaries_running(spec: AttackSpec, models: list[ThreatModel]) -> list[ThreatModel]:
    """The adversaries that run `spec`: those it names (each must be able to), or every one
    that can (at least one must)."""
    by_name = {model.name: model for model in models}
    if spec.adversaries:
        chosen = []
        for name in spec.adversaries:
            if name not in by_name:
                raise FedmiaError(f"attack {spec.label!r} names adversary {name!r}, which this run does not "
                                  f"have (it has {', '.join(by_name) or 'none'}); add it or drop it from the attack")
            missing = by_name[name].missing(spec)
            if missing:
                raise FedmiaError(f"attack {spec.label!r} needs {' and '.join(missing)} access, which the "
                                  f"{name} adversary lacks; drop {name} from its adversaries")
            chosen.append(by_name[name])
        return chosen
    runnable = [model for model in models if model.can_run(spec)]
    if not runnable:
        needs = " and ".join(sorted(spec.build().requires))
        raise FedmiaError(f"attack {spec.label!r} needs {needs} access, which no adversary of this run has "
                          f"({', '.join(by_name) or 'none'}); drop it or add an adversary that can run it")
    return runnable
