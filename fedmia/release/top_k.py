"""Top-k masking: the querier gets the k largest posteriors exactly and the rest of the
probability mass spread evenly over the hidden classes (seed 002's trust-score masking, the
"top-k" output of Shokri et al. 2017's defenses). It learns nothing from membership."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from fedmia.attacks.base import OutputGranularity, Parameter
from fedmia.release.base import ReleaseDefense, keep_labels


class TopKRelease(ReleaseDefense):
    """`OutputGranularity(top_k=k).reveal` as a defense; k at or above the number of classes
    releases the logits unchanged."""

    name: ClassVar[str] = "top-k"
    parameters: ClassVar[dict[str, Parameter]] = {
        "k": Parameter(3, low=1, high=100_000, help="posteriors released exactly; the rest are spread evenly"),
    }

    def _release(self, logits: np.ndarray) -> np.ndarray:
        # A row whose classes all tie can come back with a hidden class a rounding step above
        # the top one; keep_labels restores the raw label there.
        return keep_labels(logits, OutputGranularity(top_k=self.params["k"]).reveal(logits))
