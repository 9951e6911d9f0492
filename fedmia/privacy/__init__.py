"""Privacy accounting (formal epsilon) and budgets."""

from fedmia.privacy.accounting import (
    allocate_layer_sigmas,
    calibrate_noise_multiplier,
    effective_noise_multiplier,
    epsilon_of,
)
from fedmia.privacy.budget import PrivacySpent, default_delta

__all__ = [
    "PrivacySpent",
    "allocate_layer_sigmas",
    "calibrate_noise_multiplier",
    "default_delta",
    "effective_noise_multiplier",
    "epsilon_of",
]
