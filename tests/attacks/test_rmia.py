"""RMIA: the pairwise likelihood-ratio fraction and the offline `a` approximation on hand-set
outputs, thresholds, and planted membership on digits."""

from __future__ import annotations

import math

import numpy as np
import pytest

from fedmia.attacks.base import AdversaryKnowledge, ReferenceRequest, Samples, TargetView
from fedmia.attacks.references_util import population_sample
from fedmia.attacks.rmia import RmiaAttack, log_mean_posterior, log_prior
from fedmia.errors import FedmiaError
from tests.attacks.test_references_util import (
    fixed_phi_model,
    hand_references,
    independent,
    one_hot_images,
    planted,
)
from tests.attacks.planted import auc_and_accuracy

# Seven one-hot records: candidates x (indices 10-12) are columns 0-2, population z (20-23)
# columns 3-6. Each model's row gives the log-odds phi of label 1 per column.
IMAGES, LABELS = one_hot_images(7), np.ones(7, dtype=np.int64)
CANDIDATES = Samples(IMAGES[:3], LABELS[:3], np.array([10, 11, 12]))
POPULATION = Samples(IMAGES[3:], LABELS[3:], np.array([20, 21, 22, 23]))
REFERENCE_PHIS = [[1.0, -1.0, 2.0, 0.5, 0.0, -0.5, 1.5], [3.0, 0.5, 0.0, 1.0, 2.0, 0.0, -1.0]]
REFERENCE_MEMBERS = [[10, 20, 21], [11, 12, 22]]
TARGET_PHIS = [2.5, 0.0, 1.0, 0.0, 1.0, -1.0, 0.5]


def sigmoid(phi: float) -> float:
    return 1 / (1 + math.exp(-phi))


def prior(column: int, index: int, online: bool, a: float) -> float:
    """Pr(record) by hand: the references' mean, offline ((1 + a) Pr_OUT + 1 - a) / 2."""
    posteriors = [(sigmoid(row[column]), index in members)
                  for row, members in zip(REFERENCE_PHIS, REFERENCE_MEMBERS)]
    if online:
        return sum(p for p, _ in posteriors) / len(posteriors)
    out = [p for p, member in posteriors if not member]
    return ((1 + a) * sum(out) / len(out) + 1 - a) / 2


def expected_scores(online: bool, a: float = 0.3, gamma: float = 1.0,
                    z_columns: tuple[int, ...] = (3, 4, 5, 6)) -> list[float]:
    """Per x: the fraction of z with (Pr(x|t) / Pr(x)) / (Pr(z|t) / Pr(z)) > gamma."""
    def ratio(column: int) -> float:
        index = (10 + column) if column < 3 else (17 + column)
        return sigmoid(TARGET_PHIS[column]) / prior(column, index, online, a)

    return [sum(ratio(x) / ratio(z) > gamma for z in z_columns) / len(z_columns) for x in range(3)]


def hand_rmia(**params) -> np.ndarray:
    references = hand_references(REFERENCE_PHIS, REFERENCE_MEMBERS)
    knowledge = AdversaryKnowledge(2, references=references, population=POPULATION, seed=0)
    attack = RmiaAttack(augment=1, **params).fit(knowledge)
    return attack.score(TargetView(fixed_phi_model(TARGET_PHIS)), CANDIDATES)


@pytest.mark.parametrize("online", [True, False])
@pytest.mark.parametrize("gamma", [1.0, 1.5])
def test_score_is_the_fraction_of_population_records_x_beats(online, gamma):
    expected = expected_scores(online, gamma=gamma)
    assert hand_rmia(online=online, gamma=gamma).tolist() == expected


def test_the_hand_case_tells_the_parameters_apart():
    """Guards the test above: online vs offline, a and gamma each change some score."""
    baseline = expected_scores(False)
    assert expected_scores(True) != baseline
    assert expected_scores(False, a=1.0) != baseline
    assert expected_scores(False, gamma=1.5) != baseline
    assert hand_rmia(a=1.0).tolist() == expected_scores(False, a=1.0)


def test_offline_prior_is_the_a_approximation_of_the_out_mean():
    posteriors = np.log(np.array([[0.9, 0.2, 0.6], [0.5, 0.4, 0.8], [0.7, 0.1, 0.3]]))
    membership = np.array([[True, False, True], [False, False, True], [False, True, True]])
    a = 0.3
    out_means = [(0.5 + 0.7) / 2, (0.2 + 0.4) / 2, (0.5 + 0.7 + 0.2 + 0.4) / 4]  # last: all IN, pooled
    expected = [((1 + a) * mean + 1 - a) / 2 for mean in out_means]
    np.testing.assert_allclose(np.exp(log_prior(posteriors, membership, False, a)), expected, rtol=1e-12)
    np.testing.assert_allclose(np.exp(log_prior(posteriors, membership, True, a)),
                               [0.7, 0.7 / 3, 1.7 / 3], rtol=1e-12)
    np.testing.assert_allclose(np.exp(log_prior(posteriors, membership, False, 1.0)), out_means, rtol=1e-12)
    assert log_prior(posteriors, np.ones((3, 3), dtype=bool), False, a) is None


def test_target_posterior_is_averaged_over_queries_on_a_log_scale():
    phi = np.array([[0.0, 60.0, -800.0], [math.log(3), 40.0, -800.0]])
    found = log_mean_posterior(phi)
    assert found[0] == pytest.approx(math.log((0.5 + 0.75) / 2), rel=1e-12)
    assert found[1] == pytest.approx(-(math.exp(-60) + math.exp(-40)) / 2, rel=1e-9), "p_y rounds to 1"
    assert found[2] == pytest.approx(-800.0, rel=1e-12), "p_y underflows"


def test_queries_average_the_posterior():
    """With the mirror, x's and z's posteriors are the mean over two columns (n and 6 - n)."""
    references = hand_references(REFERENCE_PHIS, REFERENCE_MEMBERS)
    attack = RmiaAttack(augment=2, online=True).fit(AdversaryKnowledge(2, references=references,
                                                                       population=POPULATION))
    scores = attack.score(TargetView(fixed_phi_model(TARGET_PHIS)), CANDIDATES)

    def ratio(column: int) -> float:
        target = (sigmoid(TARGET_PHIS[column]) + sigmoid(TARGET_PHIS[6 - column])) / 2
        refs = [(sigmoid(row[column]) + sigmoid(row[6 - column])) / 2 for row in REFERENCE_PHIS]
        return target / (sum(refs) / 2)

    expected = [sum(ratio(x) / ratio(z) > 1 for z in range(3, 7)) / 4 for x in range(3)]
    assert scores.tolist() == expected


def test_population_draws_that_many_z_by_the_knowledge_seed():
    references = hand_references(REFERENCE_PHIS, REFERENCE_MEMBERS)
    knowledge = AdversaryKnowledge(2, references=references, population=POPULATION, seed=7)
    attack = RmiaAttack(augment=1, population=2).fit(knowledge)
    drawn = population_sample(POPULATION, 2, seed=7)
    np.testing.assert_array_equal(attack.z.indices, drawn.indices)
    z_columns = tuple(int(index) - 17 for index in drawn.indices)
    scores = attack.score(TargetView(fixed_phi_model(TARGET_PHIS)), CANDIDATES)
    assert scores.tolist() == expected_scores(False, z_columns=z_columns)


def test_saturated_outputs_give_finite_ordered_scores():
    """Records every model is sure of: target posteriors 1 - e^-60, 1 - e^-40 (x) and
    1 - e^-50 (a z) all round to 1, as do the references' (phi 30, 35); their ratios still
    order on the log scale. x at phi -800 has an underflowing posterior."""
    phis = [60.0, 40.0, -800.0, 50.0, -5.0, 0.0, 1.0]
    references = hand_references([[30.0] * 7, [35.0] * 7], [[], []])
    attack = RmiaAttack(augment=1).fit(AdversaryKnowledge(2, references=references, population=POPULATION))
    scores = attack.score(TargetView(fixed_phi_model(phis)), CANDIDATES)
    assert scores.tolist() == [1.0, 0.75, 0.0]


def test_thresholds():
    references = hand_references(REFERENCE_PHIS[:1], REFERENCE_MEMBERS[:1])
    one = AdversaryKnowledge(2, references=references, population=POPULATION)
    assert RmiaAttack(refs=1).fit(one).threshold == 0.5, "no second reference: the non-member median"
    two = AdversaryKnowledge(2, references=hand_references(REFERENCE_PHIS, REFERENCE_MEMBERS),
                             population=POPULATION)
    assert 0.0 <= RmiaAttack().fit(two).threshold <= 1.0


def test_parameters_and_the_references_it_asks_for():
    attack = RmiaAttack()
    assert attack.name == "rmia" and attack.params == {
        "refs": 2, "online": False, "a": 0.3, "gamma": 1.0, "population": 500, "augment": 1}
    assert RmiaAttack(refs=3, online=True).references_needed() == ReferenceRequest(3, True)


@pytest.mark.parametrize("params", [{"refs": 0}, {"a": 1.5}, {"a": -0.1}, {"gamma": 0.0},
                                    {"gamma": -1.0}, {"population": 0}, {"augment": 0},
                                    {"online": "no"}, {"temperature": 2.0}])
def test_bad_parameters_are_refused_at_construction(params):
    with pytest.raises(FedmiaError):
        RmiaAttack(**params)


def test_it_needs_references_a_population_and_a_fit():
    references = hand_references(REFERENCE_PHIS, REFERENCE_MEMBERS)
    with pytest.raises(FedmiaError, match="reference"):
        RmiaAttack().fit(AdversaryKnowledge(2, population=POPULATION))
    with pytest.raises(FedmiaError, match="population"):
        RmiaAttack().fit(AdversaryKnowledge(2, references=references))
    with pytest.raises(FedmiaError, match="online=true"):
        every_z = hand_references(REFERENCE_PHIS, [[20, 21, 22, 23]] * 2)
        RmiaAttack().fit(AdversaryKnowledge(2, references=every_z, population=POPULATION))
    with pytest.raises(RuntimeError, match="fit"):
        RmiaAttack().score(TargetView(fixed_phi_model(TARGET_PHIS)), CANDIDATES)


@pytest.mark.parametrize("online", [True, False])
def test_planted_members_are_found(online):
    """Digits are trained without mirrors or shifts: the sample alone is the query. Bounds are
    below LiRA's: on 60-record models, posteriors near 1 leave RMIA's probability ratios less
    room than LiRA's logit scale (AUC 0.75-0.86 over other seeds of this setup), and online
    its threshold is the fallback 1/2 (the references never trained on the population)."""
    auc, accuracy = auc_and_accuracy(RmiaAttack(refs=4, online=online, augment=1), planted(online))
    assert auc > 0.7 and accuracy > 0.6


@pytest.mark.parametrize("online", [True, False])
def test_a_target_that_never_saw_the_candidates_gives_chance(online):
    auc, _ = auc_and_accuracy(RmiaAttack(refs=4, online=online), independent(online))
    assert 0.4 < auc < 0.6
