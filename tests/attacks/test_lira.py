"""LiRA: the Gaussian likelihood ratio and the one-sided offline score on hand-set outputs,
pooled and per-example variances, fallbacks, thresholds, and planted membership on digits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedmia.attacks.base import AdversaryKnowledge, ReferenceRequest, TargetView
from fedmia.attacks.lira import MIN_VARIANCE, LiraAttack
from fedmia.attacks.references_util import MAX_QUERIES
from fedmia.errors import FedmiaError
from tests.attacks.test_references_util import (
    fixed_phi_model,
    hand_references,
    hand_samples,
    independent,
    planted,
)
from tests.attacks.planted import auc_and_accuracy

# Three candidates (dataset indices 10, 11, 12), four references; phi = log-odds of the label.
REFERENCE_PHIS = [[2.0, 1.0, 0.5], [4.0, 3.0, -1.0], [0.0, -1.0, 0.0], [-2.0, 1.0, 1.5]]
REFERENCE_MEMBERS = [[10, 11], [10], [], []]
TARGET_PHIS = [3.5, 2.0, 1.0]
# IN:  candidate 10 has (2, 4), 11 has (1), 12 none: it takes the mean of all IN values, 7/3.
# OUT: candidate 10 has (0, -2), 11 (3, -1, 1), 12 (0.5, -1, 0, 1.5).
# Pooled IN variance: ((2-3)^2 + (4-3)^2) / 1 = 2. Pooled OUT variance: squares 2 + 8 + 3.25 over
# degrees of freedom 1 + 2 + 3. Per example: 11's IN and 12's IN fall back to the pooled 2.
IN_MEANS, OUT_MEANS = [3.0, 1.0, 7 / 3], [-1.0, 1.0, 0.25]
POOLED_IN, POOLED_OUT = 2.0, 13.25 / 6
VARIANCES = {  # fixed_variance: (IN variances, OUT variances)
    True: ([POOLED_IN] * 3, [POOLED_OUT] * 3),
    False: ([2.0, POOLED_IN, POOLED_IN], [2.0, 4.0, 3.25 / 3]),
}


def log_normal(x: float, mean: float, variance: float) -> float:
    return -0.5 * math.log(2 * math.pi * variance) - (x - mean) ** 2 / (2 * variance)


def log_normal_cdf(x: float, mean: float, variance: float) -> float:
    return math.log(0.5 * math.erfc(-(x - mean) / math.sqrt(2 * variance)))


def hand_lira(target_phis: list[float], reference_phis: list[list[float]], members: list[list[int]],
              **params) -> np.ndarray:
    references = hand_references(reference_phis, members)
    attack = LiraAttack(augment=1, **params).fit(AdversaryKnowledge(2, references=references))
    return attack.score(TargetView(fixed_phi_model(target_phis)), hand_samples(len(target_phis)))


@pytest.mark.parametrize("fixed_variance", [True, False])
def test_online_score_is_the_gaussian_log_likelihood_ratio(fixed_variance):
    in_vars, out_vars = VARIANCES[fixed_variance]
    expected = [log_normal(t, m_in, v_in) - log_normal(t, m_out, v_out)
                for t, m_in, v_in, m_out, v_out in zip(TARGET_PHIS, IN_MEANS, in_vars, OUT_MEANS, out_vars)]
    scores = hand_lira(TARGET_PHIS, REFERENCE_PHIS, REFERENCE_MEMBERS, online=True,
                       fixed_variance=fixed_variance)
    np.testing.assert_allclose(scores, expected, rtol=1e-12)


@pytest.mark.parametrize("fixed_variance", [True, False])
def test_offline_score_is_the_log_out_cdf(fixed_variance):
    _, out_vars = VARIANCES[fixed_variance]
    expected = [log_normal_cdf(t, m, v) for t, m, v in zip(TARGET_PHIS, OUT_MEANS, out_vars)]
    scores = hand_lira(TARGET_PHIS, REFERENCE_PHIS, REFERENCE_MEMBERS, fixed_variance=fixed_variance)
    np.testing.assert_allclose(scores, expected, rtol=1e-12)


def test_without_two_references_on_a_side_the_spread_around_the_pooled_mean_is_used():
    # One reference, IN for 10 and 11 (phi 2, 1), OUT for 12 and 13 (0.5, -0.5): each side's
    # pooled mean is 1.5 and 0, its variance the spread around it over n - 1 = 0.5.
    phis, members, target = [[2.0, 1.0, 0.5, -0.5]], [[10, 11]], [3.0, 0.0, 1.0, -1.0]
    in_means, out_means = [2.0, 1.0, 1.5, 1.5], [0.0, 0.0, 0.5, -0.5]
    expected = [log_normal(t, m_in, 0.5) - log_normal(t, m_out, 0.5)
                for t, m_in, m_out in zip(target, in_means, out_means)]
    np.testing.assert_allclose(hand_lira(target, phis, members, online=True, refs=1), expected, rtol=1e-12)


def test_a_side_with_one_value_gets_the_variance_floor_and_stays_finite():
    scores = hand_lira([60.0, -60.0], [[50.0, 1.0]], [[10]], online=True, refs=1)
    expected = [log_normal(60.0, 50.0, MIN_VARIANCE) - log_normal(60.0, 1.0, MIN_VARIANCE),
                log_normal(-60.0, 50.0, MIN_VARIANCE) - log_normal(-60.0, 1.0, MIN_VARIANCE)]
    assert np.all(np.isfinite(scores))
    np.testing.assert_allclose(scores, expected, rtol=1e-12)


@pytest.mark.parametrize("online", [True, False])
def test_queries_add_their_terms(online):
    """With augment=2 the mirror is a second query: on one-hot records, record n's mirror is
    record 2 - n, so its phi is the mirrored row of every model; the scores add."""
    mirrored = [row[::-1] for row in REFERENCE_PHIS]
    references = hand_references(REFERENCE_PHIS, REFERENCE_MEMBERS)
    attack = LiraAttack(augment=2, online=online).fit(AdversaryKnowledge(2, references=references))
    both = attack.score(TargetView(fixed_phi_model(TARGET_PHIS)), hand_samples(3))
    first = hand_lira(TARGET_PHIS, REFERENCE_PHIS, REFERENCE_MEMBERS, online=online)
    second = hand_lira(TARGET_PHIS[::-1], mirrored, REFERENCE_MEMBERS, online=online)
    np.testing.assert_allclose(both, first + second, rtol=1e-12)


def test_offline_a_higher_target_confidence_scores_higher():
    """Offline the score is a CDF, increasing in phi; the online ratio is not monotone where the
    IN and OUT Gaussians differ in width."""
    low, high = (hand_lira([phi] * 3, REFERENCE_PHIS, REFERENCE_MEMBERS) for phi in (0.0, 2.0))
    assert np.all(high > low)


def test_online_without_any_in_reference_says_so():
    with pytest.raises(FedmiaError, match="online=false"):
        hand_lira(TARGET_PHIS, REFERENCE_PHIS, [[], [], [], []], online=True)


def test_thresholds_without_calibration_data():
    references = hand_references(REFERENCE_PHIS[:1], [[10]])
    knowledge = AdversaryKnowledge(2, references=references, population=hand_samples(3, first_index=20))
    assert LiraAttack(online=True).fit(knowledge).threshold == 0.0
    assert LiraAttack(augment=3).fit(knowledge).threshold == pytest.approx(3 * math.log(0.5))


def test_parameters_and_the_references_it_asks_for():
    attack = LiraAttack()
    assert attack.name == "lira" and attack.params == {"refs": 8, "online": False,
                                                       "fixed_variance": True, "augment": 1}
    assert LiraAttack(refs=4, online=True).references_needed() == ReferenceRequest(4, True)


@pytest.mark.parametrize("params", [{"refs": 0}, {"augment": 0}, {"augment": MAX_QUERIES + 1},
                                    {"online": 1}, {"fixed_variance": "yes"}, {"refs": 2.5},
                                    {"shadows": 4}])
def test_bad_parameters_are_refused_at_construction(params):
    with pytest.raises(FedmiaError):
        LiraAttack(**params)


def test_it_needs_references_and_a_fit():
    with pytest.raises(FedmiaError, match="reference"):
        LiraAttack().fit(AdversaryKnowledge(2))
    with pytest.raises(RuntimeError, match="fit"):
        LiraAttack().score(TargetView(fixed_phi_model(TARGET_PHIS)), hand_samples(3))


def test_references_answer_each_sample_set_once():
    calls: list[int] = []
    references = hand_references(REFERENCE_PHIS, REFERENCE_MEMBERS)
    for reference in references:
        reference.model.register_forward_hook(lambda *_: calls.append(1))
    population = hand_samples(3, first_index=10)
    attack = LiraAttack(augment=2).fit(AdversaryKnowledge(2, references=references, population=population))
    assert len(calls) == 4 * 2, "population records: each reference, each query, once"
    candidates = hand_samples(3)
    target = TargetView(fixed_phi_model(TARGET_PHIS))
    np.testing.assert_array_equal(attack.score(target, candidates), attack.score(target, candidates))
    assert len(calls) == 4 * 2 * 2


@pytest.mark.parametrize("online", [True, False])
def test_planted_members_are_found(online):
    """Digits are trained without mirrors or shifts, so the sample alone (augment=1) is the
    query the target was fitted on."""
    auc, accuracy = auc_and_accuracy(LiraAttack(refs=4, online=online, augment=1), planted(online))
    assert auc > 0.75 and accuracy > 0.65


@pytest.mark.parametrize("online", [True, False])
def test_planted_members_are_found_with_the_mirror_query_too(online):
    """Weaker: the target never trained on mirrored digits, so that query adds mostly noise
    (and offline, a sum of log-CDFs is dominated by its lowest query)."""
    auc, _ = auc_and_accuracy(LiraAttack(refs=4, online=online), planted(online))
    assert auc > 0.6


@pytest.mark.parametrize("online", [True, False])
def test_a_target_that_never_saw_the_candidates_gives_chance(online):
    auc, _ = auc_and_accuracy(LiraAttack(refs=4, online=online), independent(online))
    assert 0.4 < auc < 0.6
