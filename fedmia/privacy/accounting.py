"""Formal accounting for record-level DP-SGD, on Opacus's accountants.

Every noisy step a client takes is one Poisson-subsampled Gaussian mechanism, fixed by its noise
multiplier sigma and its sample rate q. A client's `AccountantRecord` is the history of
(sigma, q, steps) entries of the rounds it trained in; the epsilon of everything it released is
the composition of that history. The record is plain JSON, so it survives Flower rebuilding the
client every round.

Layered DP (per-layer clipping C_l and noise sigma_l C_l, one shared Poisson sample) is the same
mechanism with the effective multiplier sigma_eff = (sum_l sigma_l^-2)^(-1/2), so it is
accounted here exactly like flat DP-SGD.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from opacus.accountants import PRVAccountant, RDPAccountant

from fedmia.errors import FedmiaError

ACCOUNTANTS = {"rdp": RDPAccountant, "prv": PRVAccountant}

#: Opacus's RDP orders stop at 63; at small epsilons the best order is higher, so Opacus's bound
#: is looser than it need be (and it warns). Any set of orders gives a valid bound; these add
#: the large orders Google's dp-accounting also uses.
RDP_ORDERS = [*RDPAccountant.DEFAULT_ALPHAS, 80, 128, 256, 512, 1024]

#: PRV's epsilon is an upper bound with an absolute error: a first pass at PRV_ERROR gives the
#: scale, and a second one runs when that error would exceed PRV_RELATIVE_ERROR of epsilon.
PRV_ERROR = 0.01
PRV_RELATIVE_ERROR = 0.002

#: Calibration stops within this fraction below the target epsilon.
CALIBRATION_TOLERANCE = 0.005
CALIBRATION_MAX_HALVINGS = 60
MAX_NOISE_MULTIPLIER = 1e6

Mechanism = tuple[float, float, int]
"""(noise multiplier, sample rate, steps): `steps` Poisson-subsampled Gaussian steps."""


def check_accountant(name: str) -> str:
    if name not in ACCOUNTANTS:
        raise FedmiaError(f"unknown accountant {name!r}; choose one of {', '.join(ACCOUNTANTS)}")
    return name


def compute_epsilon(history: Sequence[Mechanism], delta: float, accountant: str = "rdp") -> float:
    """Epsilon at `delta` of the composition of every (sigma, q, steps) entry. Entries with the
    same (sigma, q) are one mechanism repeated, so they are merged first: the result then does not
    depend on how the steps were split into rounds."""
    merged: dict[tuple[float, float], int] = {}
    for sigma, rate, steps in history:
        if steps > 0:
            key = (float(sigma), float(rate))
            merged[key] = merged.get(key, 0) + int(steps)
    if not merged:
        return 0.0
    mechanisms = tuple((sigma, rate, steps) for (sigma, rate), steps in sorted(merged.items()))
    return _composed_epsilon(mechanisms, float(delta), check_accountant(accountant))


# Opacus's RDP series for fractional orders is pure Python (about 0.1 s an epsilon), and clients of
# one process often share their calibration and their per-round histories: cache.
@functools.lru_cache(maxsize=4096)
def _composed_epsilon(mechanisms: tuple[Mechanism, ...], delta: float, accountant: str) -> float:
    tracker = ACCOUNTANTS[accountant]()
    tracker.history = list(mechanisms)
    if accountant == "rdp":
        return float(tracker.get_epsilon(delta=delta, alphas=RDP_ORDERS))
    with warnings.catch_warnings():
        # PRV sizes its discretization domain with an RDP bound over Opacus's default orders,
        # which warns when the best order is the largest; the PRV result does not depend on it.
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        # At q = 1 its privacy-loss transform takes log(1 - q) = -inf on purpose.
        warnings.filterwarnings("ignore", message="divide by zero encountered in log", category=RuntimeWarning)
        coarse = float(tracker.get_epsilon(delta=delta, eps_error=PRV_ERROR))
        fine_error = PRV_RELATIVE_ERROR * coarse
        if fine_error >= PRV_ERROR:
            return coarse
        return float(tracker.get_epsilon(delta=delta, eps_error=fine_error))


@functools.lru_cache(maxsize=256)
def calibrate_noise_multiplier(target_epsilon: float, delta: float, sample_rate: float, steps: int,
                               accountant: str = "rdp") -> float:
    """The noise multiplier whose `steps` subsampled Gaussian steps at rate `sample_rate` spend
    at most `target_epsilon` at `delta`, and at least (1 - CALIBRATION_TOLERANCE) of it.

    A bisection on `compute_epsilon` itself, so that the calibration and every epsilon reported
    later rest on the same computation."""
    if not (target_epsilon > 0 and math.isfinite(target_epsilon)):
        raise FedmiaError(f"target epsilon must be positive and finite, got {target_epsilon}")
    if not (0 < sample_rate <= 1 and steps > 0):
        raise FedmiaError(f"cannot calibrate noise for sample rate {sample_rate} and {steps} steps; "
                          "both must be positive (and the rate at most 1)")

    def epsilon(sigma: float) -> float:
        return compute_epsilon([(sigma, sample_rate, steps)], delta, accountant)

    low, high = 0.0, 1.0
    while epsilon(high) > target_epsilon:
        low, high = high, 2 * high
        if high > MAX_NOISE_MULTIPLIER:
            raise FedmiaError(f"epsilon={target_epsilon} at delta={delta} needs a noise multiplier above "
                              f"{MAX_NOISE_MULTIPLIER:g} for {steps} steps at sample rate {sample_rate:.3g}; "
                              "raise epsilon or train fewer rounds or epochs")
    for _ in range(CALIBRATION_MAX_HALVINGS):
        if epsilon(high) >= (1 - CALIBRATION_TOLERANCE) * target_epsilon:
            break
        middle = (low + high) / 2
        low, high = (low, middle) if epsilon(middle) <= target_epsilon else (middle, high)
    return high


@dataclass
class AccountantRecord:
    """One client's privacy ledger: what it released so far, at its fixed delta."""

    accountant: str
    delta: float
    history: list[Mechanism] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_accountant(self.accountant)

    @property
    def steps(self) -> int:
        return sum(steps for _, _, steps in self.history)

    def epsilon(self) -> float:
        return compute_epsilon(self.history, self.delta, self.accountant)

    def epsilon_after(self, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """The epsilon the client would have spent after `steps` more steps."""
        return compute_epsilon([*self.history, (noise_multiplier, sample_rate, steps)], self.delta,
                               self.accountant)

    def record(self, noise_multiplier: float, sample_rate: float, steps: int) -> None:
        self.history.append((float(noise_multiplier), float(sample_rate), int(steps)))

    def to_json(self) -> dict[str, Any]:
        return {"accountant": self.accountant, "delta": self.delta,
                "history": [list(entry) for entry in self.history]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AccountantRecord:
        history = [(float(sigma), float(rate), int(steps)) for sigma, rate, steps in data["history"]]
        return cls(str(data["accountant"]), float(data["delta"]), history)


def effective_noise_multiplier(sigmas: Sequence[float]) -> float:
    """Layer l clipped per sample to C_l and noised with std sigma_l C_l, all on one shared
    sample: dividing layer l by sigma_l C_l makes the noise isotropic with std 1 and bounds a
    sample's contribution by sqrt(sum_l sigma_l^-2), so the step is one Gaussian mechanism with
    multiplier (sum_l sigma_l^-2)^(-1/2)."""
    if not sigmas or min(sigmas) <= 0:
        raise ValueError("every per-layer noise multiplier must be positive")
    return float(math.fsum(s**-2 for s in sigmas) ** -0.5)


def allocate_layer_sigmas(sigma_eff: float, relative_noise: Sequence[float]) -> list[float]:
    """Per-layer multipliers proportional to `relative_noise` whose effective multiplier is
    exactly `sigma_eff`: sigma_l = w_l s with s = sigma_eff sqrt(sum_l w_l^-2)."""
    if not relative_noise or min(relative_noise) <= 0:
        raise ValueError("every relative noise weight must be positive")
    scale = sigma_eff * math.sqrt(math.fsum(w**-2 for w in relative_noise))
    return [w * scale for w in relative_noise]
