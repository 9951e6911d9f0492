"""The adversaries, Flower-free: threat models, what each sees, and its reference models."""

from __future__ import annotations

from typing import Any

from fedmia.adversary.threats import (
    QUERIER,
    SERVER,
    ThreatModel,
    adversaries_running,
    malicious_clients,
    threat_models,
)
from fedmia.adversary.uploads import KeepPolicy
from fedmia.attacks.spec import parse_attack_specs


def check_threat_models(config: Any) -> None:
    """Every adversary, the querier's granularity, the upload keep policy, and every attack
    against the adversaries that are to run it: one FedmiaError line for the first problem."""
    models = threat_models(config.adversaries, config.roles, config.querier_output)
    KeepPolicy.parse(config.keep_uploads)
    for spec in parse_attack_specs(config.attacks):
        adversaries_running(spec, models)


__all__ = ["QUERIER", "SERVER", "KeepPolicy", "ThreatModel", "adversaries_running", "check_threat_models",
           "malicious_clients", "threat_models"]
