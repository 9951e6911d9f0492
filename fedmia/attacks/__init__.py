"""Membership-inference attacks, by name. One module per attack family; `ATTACKS` is the
registry the CLI and config files use, `AttackSpec` an attack with its parameters."""

from __future__ import annotations

from fedmia.attacks.base import (
    ACCESSES,
    LABELS,
    OUTPUTS,
    PEER_UPLOADS,
    TRAJECTORY,
    WHITE_BOX,
    AdversaryKnowledge,
    MembershipAttack,
    OutputGranularity,
    Parameter,
    ReferenceModel,
    ReferenceRequest,
    RoundView,
    Samples,
    ShadowObservation,
    TargetView,
)
from fedmia.attacks.blindmi import BlindMiAttack
from fedmia.attacks.label_only import LABEL_ONLY_ATTACKS
from fedmia.attacks.lira import LiraAttack
from fedmia.attacks.metric import METRIC_ATTACKS
from fedmia.attacks.rmia import RmiaAttack
from fedmia.attacks.shadow_nn import ShadowNnAttack
from fedmia.attacks.spec import AttackSpec, parse_attack_specs
from fedmia.attacks.trajectory import FedMiaAttack, LossTrajectoryAttack, UpdateAlignmentAttack
from fedmia.attacks.whitebox import GradientNormAttack, NasrAttack

ATTACKS: dict[str, type[MembershipAttack]] = {
    cls.name: cls for cls in (*METRIC_ATTACKS, LiraAttack, RmiaAttack, ShadowNnAttack, BlindMiAttack, *LABEL_ONLY_ATTACKS,
                           GradientNormAttack, NasrAttack, LossTrajectoryAttack, FedMiaAttack,
                           UpdateAlignmentAttack)}


def make_attack(text: str) -> MembershipAttack:
    """An attack from its spec text (`loss`, `rmia:refs=4`), parameters checked."""
    return AttackSpec.parse(text).build()


__all__ = [
    "ACCESSES",
    "ATTACKS",
    "LABELS",
    "OUTPUTS",
    "PEER_UPLOADS",
    "TRAJECTORY",
    "WHITE_BOX",
    "AdversaryKnowledge",
    "AttackSpec",
    "MembershipAttack",
    "OutputGranularity",
    "Parameter",
    "ReferenceModel",
    "ReferenceRequest",
    "RoundView",
    "Samples",
    "ShadowObservation",
    "TargetView",
    "make_attack",
    "parse_attack_specs",
]
