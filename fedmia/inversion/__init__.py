"""Reconstruction attacks, by name: gradient inversion on a client's update (`dlg`, `idlg`,
`inverting-gradients`) and model inversion on a model (`mi-face`, `gmi`), with their metrics
and the run's inversion phase (`fedmia.inversion.phase`), Flower-free. `INVERSIONS` is the
registry `--inversions` and config files use."""

from __future__ import annotations

from fedmia.inversion.base import (
    GRADIENT_INVERSION,
    MODEL_INVERSION,
    ClientUpdate,
    GradientInversionAttack,
    ModelAccess,
    ModelInversionAttack,
    Reconstruction,
    ReconstructionAttack,
)
from fedmia.inversion.gradient import GRADIENT_ATTACKS
from fedmia.inversion.model_inversion import Gmi, MiFace

INVERSIONS: dict[str, type[ReconstructionAttack]] = {**GRADIENT_ATTACKS, MiFace.name: MiFace, Gmi.name: Gmi}

__all__ = ["GRADIENT_INVERSION", "INVERSIONS", "MODEL_INVERSION", "ClientUpdate", "GradientInversionAttack",
           "ModelAccess", "ModelInversionAttack", "Reconstruction", "ReconstructionAttack"]
