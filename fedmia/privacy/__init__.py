"""Privacy accounting (formal epsilon) and auditing (measured lower bounds)."""

from fedmia.privacy.budget import PrivacySpent, default_delta

__all__ = ["PrivacySpent", "default_delta"]
