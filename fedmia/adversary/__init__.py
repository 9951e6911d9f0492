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
from fedmia.attacks.base import PEER_UPLOADS
from fedmia.attacks.spec import parse_attack_specs
from fedmia.errors import FedmiaError


def check_threat_models(config: Any) -> None:
    """Every adversary, the querier's granularity, the upload keep policy, and every attack
    against the adversaries that are to run it: one FedmiaError line for the first problem."""
    models = threat_models(config.adversaries, config.roles, config.querier_output)
    KeepPolicy.parse(config.keep_uploads)
    specs = parse_attack_specs(config.attacks)
    running = {spec.label: {model.name for model in adversaries_running(spec, models)} for spec in specs}
    for model in models:
        alone = model.access - {PEER_UPLOADS}
        if not any(model.name in running[spec.label] and spec.build().requires <= alone for spec in specs):
            raise FedmiaError(f"no attack in --attacks runs on every scope of the {model.name} adversary "
                              "(its scopes without other clients' uploads get none); add one it can run, "
                              "e.g. correctness")


__all__ = ["QUERIER", "SERVER", "KeepPolicy", "ThreatModel", "adversaries_running", "check_threat_models",
           "malicious_clients", "threat_models"]
