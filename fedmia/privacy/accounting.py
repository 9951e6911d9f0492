"""Formal accounting for record-level DP-SGD, on Opacus's accountants.

A client's accountant is a history of (noise multiplier, sample rate, steps) entries, one per
round it trained in; the epsilon of everything it released is the composition of that history.
The history is plain JSON, so it survives Flower rebuilding the client every round.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from opacus.accountants import PRVAccountant, RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from fedmia.errors import FedmiaError

ACCOUNTANTS = {"rdp": RDPAccountant, "prv": PRVAccountant}
CALIBRATION_TOLERANCE = 0.005

HistoryEntry = tuple[float, float, int]


def _accountant(name: str):
    if name not in ACCOUNTANTS:
        raise FedmiaError(f"unknown accountant {name!r}; choose one of {', '.join(ACCOUNTANTS)}")
    return ACCOUNTANTS[name]()


def epsilon_of(history: Sequence[HistoryEntry], delta: float, accountant: str = "rdp") -> float:
    """Epsilon at `delta` of the composition of every (sigma, q, steps) entry. Entries with the
    same (sigma, q) are one mechanism repeated, so they are merged before accounting."""
    merged: dict[tuple[float, float], int] = {}
    for sigma, rate, steps in history:
        if steps > 0:
            merged[(float(sigma), float(rate))] = merged.get((float(sigma), float(rate)), 0) + int(steps)
    if not merged:
        return 0.0
    tracker = _accountant(accountant)
    tracker.history = [(sigma, rate, steps) for (sigma, rate), steps in merged.items()]
    return float(tracker.get_epsilon(delta=delta))


def calibrate_noise_multiplier(target_epsilon: float, delta: float, sample_rate: float, steps: int,
                               accountant: str = "rdp") -> float:
    """The smallest sigma (within 0.5% of the target epsilon) whose `steps` subsampled Gaussian
    steps at rate `sample_rate` stay within (target_epsilon, delta)."""
    if not (target_epsilon > 0 and math.isfinite(target_epsilon)):
        raise FedmiaError(f"target epsilon must be positive and finite, got {target_epsilon}")
    return float(get_noise_multiplier(
        target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate, steps=steps,
        accountant=accountant, epsilon_tolerance=CALIBRATION_TOLERANCE * target_epsilon))


def effective_noise_multiplier(sigmas: Sequence[float]) -> float:
    """Per-layer Gaussian noise sigma_l * C_l on layers clipped to C_l, all on one shared
    sample, is one Gaussian mechanism with multiplier (sum_l sigma_l^-2)^(-1/2)."""
    if not sigmas or min(sigmas) <= 0:
        raise ValueError("every per-layer noise multiplier must be positive")
    return float(sum(s ** -2 for s in sigmas) ** -0.5)


def allocate_layer_sigmas(target_sigma_eff: float, relative_noise: Sequence[float]) -> list[float]:
    """Per-layer multipliers proportional to `relative_noise` whose effective multiplier is
    exactly `target_sigma_eff`: sigma_l = w_l * s with s = sigma_eff * sqrt(sum_l w_l^-2)."""
    scale = target_sigma_eff * math.sqrt(sum(w ** -2 for w in relative_noise))
    return [w * scale for w in relative_noise]
