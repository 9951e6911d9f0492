"""Shadow-model NN attack: feature rows by hand, the attack network's log-odds, and behaviour
against an overfitted and an untrained target with a shadow model trained the same way."""

import numpy as np
import pytest
from scipy.special import expit
from sklearn.neural_network import MLPClassifier
from torch import nn

from fedmia.attacks.base import (
    AdversaryKnowledge,
    OutputGranularity,
    Samples,
    ShadowObservation,
    TargetView,
)
from fedmia.attacks.shadow_nn import ShadowNnAttack, attack_features, member_log_odds
from fedmia.errors import FedmiaError
from fedmia.metrics import membership_metrics
from fedmia.models import build_model
from fedmia.training import predict_logits
from tests.attacks.planted import overfitted_cnn

PROBS = np.array([[0.1, 0.5, 0.15, 0.25]])


def test_top3_features_are_the_sorted_posteriors():
    np.testing.assert_allclose(attack_features(np.log(PROBS), np.array([2]), "top3", 4),
                               [[0.5, 0.25, 0.15]], rtol=1e-12)


def test_top3_label_features_add_the_label_posterior_and_one_hot_label():
    np.testing.assert_allclose(attack_features(np.log(PROBS), np.array([0]), "top3-label", 4),
                               [[0.5, 0.25, 0.15, 0.1, 1, 0, 0, 0]], rtol=1e-12)


def test_fewer_than_three_classes_are_zero_padded():
    np.testing.assert_allclose(attack_features(np.log([[0.3, 0.7]]), np.array([1]), "top3", 2),
                               [[0.7, 0.3, 0.0]], rtol=1e-12)


def test_member_log_odds_are_the_network_probability_without_its_rounding():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(200, 3))
    classifier = MLPClassifier((8,), solver="lbfgs", max_iter=500, random_state=0)
    classifier.fit(features, (features[:, 0] + 0.3 * rng.normal(size=200) > 0).astype(int))
    np.testing.assert_allclose(expit(member_log_odds(classifier, features)),
                               classifier.predict_proba(features)[:, 1], rtol=1e-9, atol=1e-12)
    far = np.array([[200.0, 0, 0], [400.0, 0, 0]])
    assert classifier.predict_proba(far)[:, 1].tolist() == [1.0, 1.0]
    near, farther = member_log_odds(classifier, far)
    assert np.isfinite(farther) and farther > near


def test_parameters_are_checked():
    with pytest.raises(FedmiaError, match="features"):
        ShadowNnAttack(features="top5")
    with pytest.raises(FedmiaError, match="hidden"):
        ShadowNnAttack(hidden="64")


def test_fit_needs_shadow_members_and_non_members():
    with pytest.raises(FedmiaError, match="shadow"):
        ShadowNnAttack().fit(AdversaryKnowledge(10))
    only_members = ShadowObservation(np.zeros((4, 3)), np.zeros(4, dtype=int), np.ones(4, dtype=int))
    with pytest.raises(FedmiaError, match="both members and non-members"):
        ShadowNnAttack().fit(AdversaryKnowledge(3, (only_members,)))


def test_scoring_before_fit_is_a_bug():
    with pytest.raises(RuntimeError, match="fit"):
        ShadowNnAttack().score(TargetView(nn.Flatten()), Samples(np.zeros((1, 1, 1, 2)), np.zeros(1),
                                                                   np.zeros(1)))


@pytest.fixture(scope="module")
def knowledge(digits) -> AdversaryKnowledge:
    """A shadow model trained like the target on disjoint data: 60 members, 140 non-members,
    as imbalanced as fedmia's shadow data."""
    inside, outside = np.arange(1000, 1060), np.arange(1060, 1200)
    indices = np.concatenate([inside, outside])
    logits = predict_logits(overfitted_cnn(digits, inside, seed=1), digits.images[indices])
    membership = np.r_[np.ones(len(inside)), np.zeros(len(outside))].astype(int)
    return AdversaryKnowledge(10, (ShadowObservation(logits, digits.labels[indices], membership),), seed=5)


MEMBERS, NONMEMBERS = np.arange(0, 60), np.arange(400, 460)


@pytest.fixture(scope="module")
def target(digits) -> nn.Module:
    return overfitted_cnn(digits, MEMBERS, 0)


def evaluate(attack: ShadowNnAttack, view: TargetView, digits, members: np.ndarray,
             nonmembers: np.ndarray) -> tuple[float, float, np.ndarray]:
    """(AUC, accuracy of the decisions at the fitted threshold, scores) on a balanced set."""
    indices = np.concatenate([members, nonmembers])
    scores = attack.score(view, Samples(digits.images[indices], digits.labels[indices], indices))
    labels = np.r_[np.ones(len(members)), np.zeros(len(nonmembers))].astype(int)
    return (membership_metrics(scores, labels, 1e-3).auc,
            float((attack.decide(scores) == labels.astype(bool)).mean()), scores)


@pytest.mark.parametrize("features", ["top3", "top3-label"])
def test_an_overfitted_model_leaks_its_members(digits, knowledge, target, features):
    attack = ShadowNnAttack(features=features).fit(knowledge)
    auc, decisions_correct, scores = evaluate(attack, TargetView(target), digits, MEMBERS, NONMEMBERS)
    assert auc > 0.7 and decisions_correct > 0.65
    assert np.isfinite(scores).all() and len(np.unique(scores)) > 0.9 * len(scores)


def test_top3_scores_need_only_the_top3_posteriors(digits, knowledge, target):
    attack = ShadowNnAttack().fit(knowledge)
    full = evaluate(attack, TargetView(target), digits, MEMBERS, NONMEMBERS)[2]
    top3 = evaluate(attack, TargetView(target, granularity=OutputGranularity(top_k=3)), digits,
                    MEMBERS, NONMEMBERS)[2]
    np.testing.assert_allclose(top3, full, rtol=1e-9, atol=1e-9)


def test_an_untrained_model_does_not(digits, knowledge):
    members, nonmembers = np.arange(0, 600, 2), np.arange(1, 600, 2)
    attack = ShadowNnAttack().fit(knowledge)
    auc, _, _ = evaluate(attack, TargetView(build_model("cnn", (1, 8, 8), 10, seed=0)), digits,
                         members, nonmembers)
    assert abs(auc - 0.5) < 0.1
