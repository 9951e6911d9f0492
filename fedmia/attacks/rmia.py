"""RMIA (Zarifzadeh et al. 2024, "Low-Cost High-Power Membership Inference Attacks").

A candidate x is compared with population records z, which the target never trained on:
score(x) = the fraction of z for which (Pr(x|theta) / Pr(x)) / (Pr(z|theta) / Pr(z)) > gamma,
where Pr(.|theta) is the target's posterior of the true label (averaged over the queries) and
Pr(.) its average over models, estimated from the reference models. Dividing by Pr(x) removes
how easy x is for any model; comparing with many z turns the ratio into a rank among records
known to be non-members, so few references suffice (the default is 2).

Pr(.) is estimated the same way for every record, x and z alike. Online: the mean over all
references, IN and OUT. Offline (references never trained on the candidates): from the OUT
references' mean only, scaled up by the paper's linear approximation
Pr(.) = ((1 + a) Pr_OUT(.) + (1 - a)) / 2, because leaving out the IN models underestimates
the average over all models, and more so for records a model fits well. A record that every
reference trained on (a population record while calibrating) takes the mean over all other
records' OUT references instead.

All of it runs on log probabilities, so confident members (p_y rounding to 1) and hopeless
records (p_y underflowing) still give finite, ordered ratios.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from scipy.special import logsumexp

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
    queries,
    stand_in_threshold,
    target_log_odds,
    true_label_log_odds,
)
from fedmia.errors import FedmiaError

NO_OUT_REFERENCE = ("offline rmia found no reference model that left out any record it compares; "
                    "train its references on part of the population only, or set online=true")


def log_mean_posterior(phi: np.ndarray) -> np.ndarray:
    """log of the true label's posterior averaged over the queries (axis -2), from its
    log-odds: log p_y = -log(1 + e^-phi) is exact where p_y rounds to 1."""
    log_posterior = -np.logaddexp(0.0, -phi)
    return logsumexp(log_posterior, axis=-2) - np.log(phi.shape[-2])


def log_prior(log_posteriors: np.ndarray, membership: np.ndarray, online: bool,
              a: float) -> np.ndarray | None:
    """log Pr(.) per record from the references' log posteriors and memberships (both
    references x records), as the module says; None offline when no reference left out any
    record."""
    if online:
        return logsumexp(log_posteriors, axis=0) - np.log(len(log_posteriors))
    outside = ~membership
    counts = outside.sum(axis=0)
    if counts.sum() == 0:
        return None
    masked = np.where(outside, log_posteriors, -np.inf)
    pooled = logsumexp(masked) - np.log(counts.sum())
    per_record = logsumexp(masked[:, counts > 0], axis=0) - np.log(counts[counts > 0])
    log_out = np.full(len(counts), pooled)
    log_out[counts > 0] = per_record
    with np.errstate(divide="ignore"):
        constant = np.log((1 - a) / 2)
    return np.logaddexp(np.log((1 + a) / 2) + log_out, constant)


def rmia_scores(log_target_x: np.ndarray, log_prior_x: np.ndarray, log_target_z: np.ndarray,
                log_prior_z: np.ndarray, gamma: float) -> np.ndarray:
    """Per x, the fraction of z with ratio(x) / ratio(z) > gamma, i.e.
    log ratio(z) < log ratio(x) - log gamma: a binary search in the sorted z ratios instead of
    every pair (exact for gamma = 1; otherwise up to the rounding of one subtraction)."""
    ratio_z = np.sort(log_target_z - log_prior_z)
    below = np.searchsorted(ratio_z, log_target_x - log_prior_x - np.log(gamma), side="left")
    return below / len(ratio_z)


class RmiaAttack(ReferenceAttack):
    """Threshold: the score is a rank among non-members with no natural member cut, so each
    reference in turn plays the target on the drawn population records (x and z alike; its
    own members are known, and only its non-members serve as z, as the target never trained on
    the population), with the other references estimating Pr(.), and the threshold is the best
    balanced accuracy over them. With a single reference there is no other to estimate Pr(.):
    the threshold is then 1/2, the median score of a non-member, which is exchangeable with
    the z."""

    name: ClassVar[str] = "rmia"
    requires: ClassVar[frozenset[str]] = frozenset({OUTPUTS})
    parameters: ClassVar[dict[str, Parameter]] = {
        "refs": Parameter(2, 1, None, help="reference models"),
        "online": Parameter(False, help="references trained with the candidates (IN and OUT) "
                            "instead of on the population only (OUT)"),
        "a": Parameter(0.3, 0.0, 1.0, help="offline: Pr(x) = ((1 + a) Pr_OUT(x) + 1 - a) / 2"),
        "gamma": Parameter(1.0, 0.0, None, help="how much x's ratio must beat z's (> 0)"),
        "population": Parameter(500, 1, None, help="population records z to compare with"),
        "augment": AUGMENT,
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if self.params["gamma"] <= 0:
            raise FedmiaError(f"attack 'rmia' parameter gamma={self.params['gamma']!r} must be above 0; "
                              "pick a positive value (1 is the paper's default)")

    def fit(self, knowledge: AdversaryKnowledge) -> RmiaAttack:
        signals = self.read_references(knowledge)
        z = population_sample(knowledge.population, self.params["population"], knowledge.seed)
        if z is None:
            raise FedmiaError("rmia compares candidates with population records and the adversary "
                              "has none; give it a population (a population fraction above 0)")
        self.z, self.z_queries = z, queries(z.images, self.params["augment"])
        z_posteriors, z_membership = log_mean_posterior(signals.log_odds(z)), signals.membership(z)
        self.z_prior = self._prior(z_posteriors, z_membership)
        found = stand_in_threshold(z_membership, lambda stand_in, others: self._stand_in_scores(
            z_posteriors, z_membership, stand_in, others))
        self.threshold = 0.5 if found is None else found
        return self

    def _prior(self, log_posteriors: np.ndarray, membership: np.ndarray) -> np.ndarray:
        found = log_prior(log_posteriors, membership, self.params["online"], self.params["a"])
        if found is None:
            raise FedmiaError(NO_OUT_REFERENCE)
        return found

    def _stand_in_scores(self, log_posteriors: np.ndarray, membership: np.ndarray, stand_in: int,
                         others: np.ndarray) -> np.ndarray | None:
        prior = log_prior(log_posteriors[others], membership[others], self.params["online"],
                          self.params["a"])
        if prior is None:
            return None
        outside = ~membership[stand_in]
        return rmia_scores(log_posteriors[stand_in], prior, log_posteriors[stand_in][outside],
                           prior[outside], self.params["gamma"])

    def score(self, target: TargetView, samples: Samples) -> np.ndarray:
        signals = self.fitted_signals()
        log_target_x = log_mean_posterior(target_log_odds(target, samples, self.params["augment"]))
        log_prior_x = self._prior(log_mean_posterior(signals.log_odds(samples)), signals.membership(samples))
        z_logits = [target.logits(images) for images in self.z_queries]
        log_target_z = log_mean_posterior(true_label_log_odds(z_logits, self.z.labels))
        return rmia_scores(log_target_x, log_prior_x, log_target_z, self.z_prior, self.params["gamma"])
