"""Membership-inference attacks, by name. One module per attack family; `ATTACKS` is the
registry the CLI and config files use."""

from __future__ import annotations

from fedmia.attacks.base import (
    AdversaryKnowledge,
    MembershipAttack,
    ShadowObservation,
    TargetModel,
)
from fedmia.attacks.metric import METRIC_ATTACKS
from fedmia.errors import FedmiaError

ATTACKS: dict[str, type[MembershipAttack]] = {cls.name: cls for cls in METRIC_ATTACKS}


def make_attack(name: str) -> MembershipAttack:
    if name not in ATTACKS:
        raise FedmiaError(f"unknown attack {name!r}; choose one of {', '.join(ATTACKS)}")
    return ATTACKS[name]()


__all__ = [
    "ATTACKS",
    "AdversaryKnowledge",
    "MembershipAttack",
    "ShadowObservation",
    "TargetModel",
    "make_attack",
]
