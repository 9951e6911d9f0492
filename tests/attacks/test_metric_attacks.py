"""Metric attacks: signal orientation, Song & Mittal's formula, and behaviour on real models."""

import numpy as np
import pytest
from scipy.special import softmax

from fedmia.attacks import ATTACKS, AdversaryKnowledge, ShadowObservation, TargetModel, make_attack
from fedmia.attacks.base import best_threshold
from fedmia.attacks.metric import ModifiedEntropyAttack
from fedmia.data import load_dataset
from fedmia.metrics import membership_metrics
from fedmia.models import build_model
from fedmia.training import TrainingPlan, predict_logits, train_epochs

CONFIDENT = np.array([[6.0, 0.0, 0.0]])
UNSURE = np.array([[0.2, 0.1, 0.0]])
WRONG = np.array([[0.0, 6.0, 0.0]])


@pytest.mark.parametrize("name", ["loss", "confidence", "entropy", "modified-entropy", "correctness"])
def test_a_confident_correct_prediction_scores_as_more_member_like(name):
    signal = ATTACKS[name].signal
    label = np.array([0])
    assert signal(CONFIDENT, label)[0] >= signal(UNSURE, label)[0]
    if name != "confidence" and name != "entropy":
        assert signal(CONFIDENT, label)[0] > signal(WRONG, label)[0]


def test_modified_entropy_follows_song_and_mittal():
    logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.3, 0.2]])
    labels = np.array([1, 2])
    probs = softmax(logits, axis=1)
    expected = []
    for p, y in zip(probs, labels):
        others = sum(-p[i] * np.log(1 - p[i]) for i in range(3) if i != y)
        expected.append(-(-(1 - p[y]) * np.log(p[y]) + others))
    assert ModifiedEntropyAttack.signal(logits, labels) == pytest.approx(expected)


def test_best_threshold_separates_a_toy_case():
    scores = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    membership = np.array([0, 0, 0, 1, 1, 1])
    threshold = best_threshold(scores, membership)
    assert 0.3 < threshold <= 0.7


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def shadow_knowledge(digits) -> AdversaryKnowledge:
    """A shadow model the adversary trains on its own data (indices 1000-1199 here)."""
    shadow = build_model("cnn", (1, 8, 8), 10, seed=1)
    inside, outside = np.arange(1000, 1060), np.arange(1060, 1200)
    train_epochs(shadow, digits.images[inside], digits.labels[inside], TrainingPlan(), 0, epochs=60)
    indices = np.concatenate([inside, outside])
    observation = ShadowObservation(predict_logits(shadow, digits.images[indices]), digits.labels[indices],
                                    np.r_[np.ones(len(inside)), np.zeros(len(outside))].astype(int))
    return AdversaryKnowledge((observation,), 10)


def attack_auc(model, digits, members, nonmembers, knowledge) -> tuple[float, float]:
    attack = make_attack("loss").fit(knowledge)
    indices = np.concatenate([members, nonmembers])
    scores = attack.score(TargetModel(model), digits.images[indices], digits.labels[indices])
    labels = np.r_[np.ones(len(members)), np.zeros(len(nonmembers))]
    decisions_correct = float((attack.decide(scores) == labels.astype(bool)).mean())
    return membership_metrics(scores, labels, 1e-3).auc, decisions_correct


def test_overfitted_model_leaks_and_untrained_model_does_not(digits):
    knowledge = shadow_knowledge(digits)
    members, nonmembers = np.arange(0, 60), np.arange(400, 460)
    overfitted = build_model("cnn", (1, 8, 8), 10, seed=0)
    train_epochs(overfitted, digits.images[members], digits.labels[members], TrainingPlan(), 0, epochs=60)
    auc, accuracy_at_threshold = attack_auc(overfitted, digits, members, nonmembers, knowledge)
    assert auc > 0.8 and accuracy_at_threshold > 0.65
    untrained = build_model("cnn", (1, 8, 8), 10, seed=0)
    many_members, many_nonmembers = np.arange(0, 300), np.arange(400, 700)
    auc, _ = attack_auc(untrained, digits, many_members, many_nonmembers, knowledge)
    assert abs(auc - 0.5) < 0.1
