"""Privacy accounting (formal epsilon) and budgets."""

from fedmia.privacy.accounting import (
    ACCOUNTANTS,
    AccountantRecord,
    allocate_layer_sigmas,
    calibrate_noise_multiplier,
    compute_epsilon,
    effective_noise_multiplier,
)
from fedmia.privacy.budget import PrivacySpent, default_delta

__all__ = [
    "ACCOUNTANTS",
    "AccountantRecord",
    "PrivacySpent",
    "allocate_layer_sigmas",
    "calibrate_noise_multiplier",
    "compute_epsilon",
    "default_delta",
    "effective_noise_multiplier",
]
