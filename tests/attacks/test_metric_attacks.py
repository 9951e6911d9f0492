"""Metric attacks: hand-computed signals, Song & Mittal's formula, thresholds, and behaviour
on real models through the attack interface."""

from decimal import Decimal, localcontext

import numpy as np
import pytest
from scipy.special import softmax
from torch import nn

from fedmia.attacks import ATTACKS, AdversaryKnowledge, Samples, ShadowObservation, TargetView, make_attack
from fedmia.attacks.base import best_threshold
from fedmia.attacks.metric import METRIC_ATTACKS, LossAttack, ModifiedEntropyAttack
from fedmia.metrics import membership_metrics
from fedmia.models import build_model
from fedmia.training import predict_logits
from tests.attacks.planted import overfitted_cnn

ln = np.log
#: Logits whose softmax is exactly (0.6, 0.2, 0.2).
PROBS_622 = ln(np.array([[0.6, 0.2, 0.2]]))


@pytest.mark.parametrize("name, label, expected", [
    ("loss", 0, ln(0.6)),
    ("loss", 1, ln(0.2)),
    ("confidence", 1, 0.6),
    ("entropy", 1, 0.6 * ln(0.6) + 2 * 0.2 * ln(0.2)),
    ("modified-entropy", 0, 0.4 * ln(0.6) + 2 * 0.2 * ln(0.8)),
    ("modified-entropy", 1, 0.8 * ln(0.2) + 0.6 * ln(0.4) + 0.2 * ln(0.8)),
    ("correctness", 0, 1.0),
    ("correctness", 1, 0.0),
])
def test_signals_by_hand(name, label, expected):
    assert ATTACKS[name].signal(PROBS_622, np.array([label]))[0] == pytest.approx(expected, rel=1e-12)


CONFIDENT = np.array([[6.0, 0.0, 0.0]])
UNSURE = np.array([[0.2, 0.1, 0.0]])
WRONG = np.array([[0.0, 6.0, 0.0]])


@pytest.mark.parametrize("name", [cls.name for cls in METRIC_ATTACKS])
def test_a_confident_correct_prediction_scores_as_more_member_like(name):
    signal, label = ATTACKS[name].signal, np.array([0])
    confident, unsure, wrong = (signal(logits, label)[0] for logits in (CONFIDENT, UNSURE, WRONG))
    if name == "correctness":
        assert confident == unsure > wrong
    elif name in ("confidence", "entropy"):
        assert confident > unsure and confident == pytest.approx(wrong), "label-free signals"
    else:
        assert confident > unsure > wrong


def test_modified_entropy_follows_song_and_mittal():
    logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.3, 0.2], [-3.0, 4.0, 1.0]])
    labels = np.array([1, 2, 0])
    expected = []
    for p, y in zip(softmax(logits, axis=1), labels):
        mentr = -(1 - p[y]) * np.log(p[y]) - sum(p[i] * np.log(1 - p[i]) for i in range(3) if i != y)
        expected.append(-mentr)
    assert ModifiedEntropyAttack.signal(logits, labels) == pytest.approx(expected, rel=1e-12)


def exact_signals(logits: np.ndarray, label: int) -> tuple[float, float]:
    """(log p_y, -Mentr) in 60-digit decimal arithmetic."""
    with localcontext() as context:
        context.prec = 60
        exps = [Decimal(float(z)).exp() for z in logits]
        p = [e / sum(exps) for e in exps]
        mentr = -(1 - p[label]) * p[label].ln() - sum(
            p[i] * (1 - p[i]).ln() for i in range(len(p)) if i != label)
        return float(p[label].ln()), float(-mentr)


MARGINS = [5.0, 20.0, 38.0, 60.0, 90.0]


def confident_logits() -> np.ndarray:
    """Ten classes; class 0 ahead of the rest by MARGINS (float64 rounds p_0 to 1 past ~37)."""
    logits = np.zeros((len(MARGINS), 10))
    logits[:, 0] = MARGINS
    logits[:, 4] = 1.5
    return logits


@pytest.mark.parametrize("label", [0, 4, 7])
def test_loss_and_modified_entropy_stay_exact_for_confident_predictions(label):
    logits, labels = confident_logits(), np.full(len(MARGINS), label)
    exact = np.array([exact_signals(row, label) for row in logits])
    np.testing.assert_allclose(LossAttack.signal(logits, labels), exact[:, 0], rtol=1e-9)
    np.testing.assert_allclose(ModifiedEntropyAttack.signal(logits, labels), exact[:, 1], rtol=1e-9)


def test_the_most_confident_members_do_not_tie():
    logits, labels = confident_logits(), np.zeros(len(MARGINS), dtype=int)
    for attack in (LossAttack, ModifiedEntropyAttack):
        scores = attack.signal(logits, labels)
        assert np.all(np.diff(scores) > 0) and np.all(scores < 0), attack.name


def test_best_threshold_on_toy_cases():
    separable = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    assert best_threshold(separable, np.array([0, 0, 0, 1, 1, 1])) == 0.7
    # Members 0.3, 0.5, 0.55, 0.6; non-members 0.1, 0.2, 0.4. At 0.5: TPR 3/4, TNR 1 (0.875);
    # at 0.3: TPR 1, TNR 2/3 (0.833); every other threshold does worse.
    overlapping = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.55, 0.6])
    assert best_threshold(overlapping, np.array([0, 0, 1, 0, 1, 1, 1])) == 0.5


def test_best_threshold_reaches_the_best_balanced_accuracy_with_ties():
    rng = np.random.default_rng(0)
    membership = rng.integers(0, 2, 400)
    scores = np.round(rng.normal(membership * 0.8, 1.0), 1)

    def balanced_accuracy(t: float) -> float:
        return ((scores[membership == 1] >= t).mean() + (scores[membership == 0] < t).mean()) / 2

    best = max(balanced_accuracy(t) for t in np.unique(scores))
    threshold = best_threshold(scores, membership)
    assert threshold in scores and balanced_accuracy(threshold) == pytest.approx(best)


def test_an_attack_decides_only_after_it_is_fit():
    attack = make_attack("loss")
    with pytest.raises(RuntimeError, match="fit"):
        attack.decide(np.zeros(3))
    logits = np.log(np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7]]))
    shadow = ShadowObservation(logits, labels=np.zeros(3, dtype=int), membership=np.array([1, 0, 0]))
    attack.fit(AdversaryKnowledge(2, (shadow,)))
    assert attack.threshold == pytest.approx(np.log(0.9))
    assert attack.decide(np.log(np.array([0.95, 0.5]))).tolist() == [True, False]


def test_target_model_computes_logits_once_per_array():
    calls = []
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    model.register_forward_hook(lambda *_: calls.append(1))
    target, images = TargetView(model), np.ones((3, 1, 2, 2), dtype=np.float32)
    first = target.logits(images)
    assert target.logits(images) is first and len(calls) == 1
    target.logits(images.copy())
    assert len(calls) == 2


@pytest.fixture(scope="module")
def knowledge(digits) -> AdversaryKnowledge:
    """A shadow model the adversary trains itself, on data disjoint from the target's
    (indices 1000-1199): 60 shadow members, 140 shadow non-members."""
    inside, outside = np.arange(1000, 1060), np.arange(1060, 1200)
    shadow = overfitted_cnn(digits, inside, seed=1, epochs=60)
    indices = np.concatenate([inside, outside])
    membership = np.r_[np.ones(len(inside)), np.zeros(len(outside))].astype(int)
    logits = predict_logits(shadow, digits.images[indices])
    observation = ShadowObservation(logits, digits.labels[indices], membership)
    return AdversaryKnowledge(10, (observation,))


def loss_attack_on(model: nn.Module, digits, members: np.ndarray, nonmembers: np.ndarray,
                   knowledge: AdversaryKnowledge) -> tuple[float, float]:
    """(AUC, accuracy of the shadow-fitted threshold's decisions) on a balanced set."""
    attack = make_attack("loss").fit(knowledge)
    indices = np.concatenate([members, nonmembers])
    samples = Samples(digits.images[indices], digits.labels[indices], indices)
    scores = attack.score(TargetView(model), samples)
    labels = np.r_[np.ones(len(members)), np.zeros(len(nonmembers))].astype(int)
    decisions_correct = float((attack.decide(scores) == labels.astype(bool)).mean())
    return membership_metrics(scores, labels, 1e-3).auc, decisions_correct


def test_an_overfitted_model_leaks_its_members(digits, knowledge):
    members, nonmembers = np.arange(0, 60), np.arange(400, 460)
    target = overfitted_cnn(digits, members, seed=0, epochs=60)
    auc, decisions_correct = loss_attack_on(target, digits, members, nonmembers, knowledge)
    assert auc > 0.8 and decisions_correct > 0.65


def test_an_untrained_model_does_not(digits, knowledge):
    members, nonmembers = np.arange(0, 300), np.arange(400, 700)
    auc, _ = loss_attack_on(build_model("cnn", (1, 8, 8), 10, seed=0), digits, members, nonmembers,
                            knowledge)
    assert abs(auc - 0.5) < 0.1
