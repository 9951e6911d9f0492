"""What a client has spent of its privacy budget, in the terms PROTOCOL.md asks to report."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PrivacySpent:
    """Formal (epsilon, delta) of everything a client released so far, and what it rests on.

    `noise_multiplier` is sigma for flat DP-SGD and sigma_eff for layered DP; `steps` counts
    every noisy step of every round the client trained in.
    """

    epsilon: float
    delta: float
    accountant: str
    noise_multiplier: float
    sample_rate: float
    steps: int


def default_delta(num_examples: int) -> float:
    """delta = 1 / (10 n): an order of magnitude below 1/n, so that no record is expected to
    be released in the clear, and the rule is the same for every client whatever its size."""
    if num_examples <= 0:
        raise ValueError("default_delta needs a positive number of examples")
    return 1.0 / (10.0 * num_examples)
