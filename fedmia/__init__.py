"""fedmia: how much each client's data leaks in federated learning, and what protection costs.

The core is Flower-free; `fedmia.simulation.simulate` runs a whole federation on Flower + Ray.
"""

from fedmia.attacks import ATTACKS, AdversaryKnowledge, MembershipAttack, TargetView, make_attack
from fedmia.config import RunConfig, resolve_config
from fedmia.data import PartitionSpec, PrivacySplit, load_dataset, make_privacy_split
from fedmia.defenses import DEFENSES, Defense, DefenseSpec
from fedmia.errors import FedmiaError
from fedmia.metrics import AttackMetrics, membership_metrics
from fedmia.models import MODELS, build_model
from fedmia.privacy import PrivacySpent, calibrate_noise_multiplier, compute_epsilon

__version__ = "0.1.0"

__all__ = [
    "ATTACKS",
    "DEFENSES",
    "MODELS",
    "AdversaryKnowledge",
    "AttackMetrics",
    "Defense",
    "DefenseSpec",
    "FedmiaError",
    "MembershipAttack",
    "PartitionSpec",
    "PrivacySpent",
    "PrivacySplit",
    "RunConfig",
    "TargetView",
    "build_model",
    "calibrate_noise_multiplier",
    "compute_epsilon",
    "load_dataset",
    "make_attack",
    "make_privacy_split",
    "membership_metrics",
    "resolve_config",
]
