"""LiRA, the likelihood-ratio attack (Carlini et al. 2022, "Membership Inference Attacks From
First Principles").

Per candidate, the reference models show how the target's logit-scaled confidence
phi = log(p_y / (1 - p_y)) is distributed over models that trained on it (IN) and models that
did not (OUT); both are fitted by Gaussians. Online, the score is the log-likelihood ratio
log N(phi; mu_in, s_in) - log N(phi; mu_out, s_out); offline (references never trained on the
candidates) it is the one-sided log N_out-CDF at phi: how far above the typical non-member's
confidence the target's is. Each query of the sample (mirror, shifts) adds its own term, as if
the queries were independent (the paper's diagonal approximation).

Variances: with few references a per-example variance is mostly noise, so by default one
variance per side and query is pooled over all examples (the paper's advice for few
references): the within-example spread, sum (phi - mu_example)^2 over sum (n_example - 1).

Examples without references on a side (online with few references, or population records every
other reference trained on while calibrating) take that side's mean over all the other
examples' references; where no example has two references on a side (refs=1, or online
refs=2 where each example has one of each) the within-example spread is undefined and the
side's variance is the spread of all its values around that pooled mean (sum of squares over
n - 1), an overestimate that makes the attack more cautious. A side with a single value in all
has no spread at all and gets the floor MIN_VARIANCE: scores stay finite.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from scipy.special import log_ndtr
from scipy.stats import norm

from fedmia.attacks.base import (
    OUTPUTS,
    AdversaryKnowledge,
    Parameter,
    Samples,
    TargetView,
)
from fedmia.attacks.references_util import (
    AUGMENT,
    ReferenceAttack,
    population_sample,
    stand_in_threshold,
    target_log_odds,
)
from fedmia.errors import FedmiaError

#: Smallest variance of phi: a side whose references agree to float32 rounding would otherwise
#: give an infinite likelihood ratio.
MIN_VARIANCE = 1e-6
#: Population records the offline threshold is calibrated on.
CALIBRATION_RECORDS = 1000
MISSING_SIDE = {
    True: "online lira found no reference model trained on any candidate; give it references "
          "each trained on half of a pool holding the candidates, or set online=false",
    False: "lira found no reference model that left out any candidate; train its references on "
           "the population only (online=false) or on half of a pool holding the candidates",
}


def side_gaussian(values: np.ndarray, on_side: np.ndarray,
                  fixed_variance: bool) -> tuple[np.ndarray, np.ndarray] | None:
    """(mean, std), each (queries, examples), of `values` (references, queries, examples) over
    the references `on_side` (references, examples) of each example; fallbacks as the module
    says. None when no example has a reference on this side."""
    counts = on_side.sum(axis=0)
    if counts.sum() == 0:
        return None
    weights = on_side[:, None, :].astype(np.float64)
    sums = (values * weights).sum(axis=0)
    pooled_mean = sums.sum(axis=1) / counts.sum()
    mean = np.where(counts > 0, sums / np.maximum(counts, 1), pooled_mean[:, None])
    squares = ((values - mean) ** 2 * weights).sum(axis=0)
    freedom = np.maximum(counts - 1, 0)
    if freedom.sum() > 0:
        pooled_var = squares.sum(axis=1) / freedom.sum()
    else:
        spread = ((values - pooled_mean[None, :, None]) ** 2 * weights).sum(axis=(0, 2))
        pooled_var = spread / max(counts.sum() - 1, 1)
    variance = np.broadcast_to(pooled_var[:, None], mean.shape)
    if not fixed_variance:
        variance = np.where(counts >= 2, squares / np.maximum(freedom, 1), variance)
    return mean, np.sqrt(np.maximum(variance, MIN_VARIANCE))


def lira_scores(phi: np.ndarray, reference_phi: np.ndarray, membership: np.ndarray,
                online: bool, fixed_variance: bool) -> np.ndarray | None:
    """LiRA's score per example from the target's `phi` (queries, examples), the references'
    (references, queries, examples) and which reference trained on which example; None when a
    side the score needs has no reference at all."""
    outside = side_gaussian(reference_phi, ~membership, fixed_variance)
    if outside is None:
        return None
    mu_out, s_out = outside
    if not online:
        return log_ndtr((phi - mu_out) / s_out).sum(axis=0)
    inside = side_gaussian(reference_phi, membership, fixed_variance)
    if inside is None:
        return None
    mu_in, s_in = inside
    return (norm.logpdf(phi, mu_in, s_in) - norm.logpdf(phi, mu_out, s_out)).sum(axis=0)


class LiraAttack(ReferenceAttack):
    """Threshold: online, 0, where IN becomes likelier than OUT: the Bayes decision for a
    candidate set that is half members, as every evaluation set is, and it needs no
    calibration data. Offline the score is a one-sided tail probability with no natural member
    cut, so each reference in turn plays the target on population records (its members known)
    with the other references as its references, and the threshold is the best balanced
    accuracy over them. With a single reference there is no other to play its references: the
    threshold is then the non-member median, each query's OUT-CDF at 1/2 (queries' log(1/2)
    summed), since the CDF at a non-member's phi is uniform when the Gaussian holds."""

    name: ClassVar[str] = "lira"
    requires: ClassVar[frozenset[str]] = frozenset({OUTPUTS})
    parameters: ClassVar[dict[str, Parameter]] = {
        "refs": Parameter(8, 1, None, help="reference models"),
        "online": Parameter(False, help="references trained with the candidates (IN and OUT) "
                            "instead of on the population only (OUT)"),
        "fixed_variance": Parameter(True, help="one variance pooled over all examples instead of "
                                    "one per example (needs many references)"),
        "augment": AUGMENT,
    }

    def fit(self, knowledge: AdversaryKnowledge) -> LiraAttack:
        self.read_references(knowledge)
        if self.params["online"]:
            self.threshold = 0.0
            return self
        calibration = population_sample(knowledge.population, CALIBRATION_RECORDS, knowledge.seed)
        found = None if calibration is None else self._stand_in_threshold(calibration)
        self.threshold = self.params["augment"] * float(np.log(0.5)) if found is None else found
        return self

    def _stand_in_threshold(self, records: Samples) -> float | None:
        signals = self.fitted_signals()
        phi, membership = signals.log_odds(records), signals.membership(records)

        def score(stand_in: int, others: np.ndarray) -> np.ndarray | None:
            return lira_scores(phi[stand_in], phi[others], membership[others], False,
                               self.params["fixed_variance"])

        return stand_in_threshold(membership, score)

    def score(self, target: TargetView, samples: Samples) -> np.ndarray:
        signals, online = self.fitted_signals(), self.params["online"]
        found = lira_scores(target_log_odds(target, samples, self.params["augment"]),
                            signals.log_odds(samples), signals.membership(samples),
                            online, self.params["fixed_variance"])
        if found is None:
            raise FedmiaError(MISSING_SIDE[online])
        return found
