"""MemGuard: labels kept on any logits, the defender's classifier left undecided, attacks that
separate members on the raw outputs left with what the labels reveal, the budget deciding how
often the noise is added, and bad parameters as one-line errors."""

import numpy as np
import pytest
import torch
from scipy.special import softmax
from sklearn.metrics import roc_auc_score
from sklearn.neural_network import MLPClassifier

from fedmia.attacks import TargetView
from fedmia.attacks.metric import ConfidenceAttack, CorrectnessAttack, LossAttack
from fedmia.attacks.shadow_nn import attack_features
from fedmia.data import load_dataset
from fedmia.errors import FedmiaError
from fedmia.release import MemGuardRelease, make_release
from fedmia.training import predict_logits
from tests.attacks.planted import overfitted_cnn

CLASSES = 10
ROWS = 400
#: Mean margin of the label's logit for members and non-members, by number of classes.
MARGINS = {10: (7.0, 4.0), 2: (4.0, 1.5)}


def planted(rng: np.random.Generator, rows: int, member: bool,
            classes: int = CLASSES) -> tuple[np.ndarray, np.ndarray]:
    """(logits, labels): the label's logit ahead by a margin that is larger for members, so
    members get more confident outputs (and are misclassified less often)."""
    labels = rng.integers(0, classes, rows)
    logits = rng.normal(0, 1, (rows, classes))
    logits[np.arange(rows), labels] += rng.normal(MARGINS[classes][0 if member else 1], 1.5, rows)
    return logits, labels


def planted_pair(rng: np.random.Generator, classes: int = CLASSES) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(logits, labels, membership) of ROWS members then ROWS non-members."""
    (members, member_labels), (others, other_labels) = (planted(rng, ROWS, True, classes),
                                                         planted(rng, ROWS, False, classes))
    membership = np.r_[np.ones(ROWS), np.zeros(ROWS)]
    return np.vstack([members, others]), np.r_[member_labels, other_labels], membership


def fitted(seed: int = 0, classes: int = CLASSES, **params) -> MemGuardRelease:
    """MemGuard fit on the defender's own planted members and non-members."""
    logits, labels, membership = planted_pair(np.random.default_rng(100 + seed), classes)
    defense = MemGuardRelease(**params)
    defense.fit(logits[membership == 1], logits[membership == 0], labels[membership == 1],
                labels[membership == 0], seed=seed)
    return defense


def probs(logits: np.ndarray) -> np.ndarray:
    return softmax(logits, axis=1)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread, as the attack phase runs: MemGuard's tensors are a few thousand rows
    wide, so a second thread only contends for the shared cores (ten times slower)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def defense() -> MemGuardRelease:
    return fitted()


@pytest.fixture(scope="module")
def evaluation() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return planted_pair(np.random.default_rng(1))


@pytest.fixture(scope="module")
def released(defense, evaluation) -> np.ndarray:
    return defense.transform(evaluation[0])


def test_labels_never_change_on_ties_and_random_logits(defense):
    rng = np.random.default_rng(2)
    few = rng.choice([-1.0, 0.0, 4.0, 4.0, 6.0], (300, CLASSES))
    all_tied = np.full((20, CLASSES), 3.0)
    top_two_tied = rng.normal(0, 1, (100, CLASSES))
    top_two_tied[:, [2, 7]] = 6.0
    wild = rng.normal(0, 20, (300, CLASSES))
    logits = np.vstack([few, all_tied, top_two_tied, wild])
    released = defense.transform(logits)
    assert np.array_equal(released.argmax(axis=1), logits.argmax(axis=1))
    changed = np.abs(released - logits).max(axis=1) > 0
    assert changed[:300].mean() > 0.3 and changed[400:].mean() > 0.3, "the property held on noised rows"


def test_attacks_fall_to_what_the_labels_reveal_within_the_budget():
    """Two classes: the sorted probability vector is one number, so g sees all the planted
    signal. Label-free attacks fall to a coin flip; the loss attack keeps only what the
    (untouched) labels reveal, i.e. the correctness attack's AUC."""
    defense = fitted(classes=2)
    logits, labels, membership = planted_pair(np.random.default_rng(1), classes=2)
    released = defense.transform(logits)

    def auc(signal: np.ndarray) -> float:
        return roc_auc_score(membership, signal)

    assert auc(ConfidenceAttack.signal(logits, labels)) > 0.75
    assert abs(auc(ConfidenceAttack.signal(released, labels)) - 0.5) < 0.05
    assert auc(LossAttack.signal(logits, labels)) > 0.8
    assert auc(LossAttack.signal(released, labels)) < auc(CorrectnessAttack.signal(logits, labels)) + 0.05

    # An attack classifier trained on the adversary's own (undefended) shadow outputs.
    shadow, shadow_labels, shadow_membership = planted_pair(np.random.default_rng(3), classes=2)
    classifier = MLPClassifier((64,), solver="lbfgs", max_iter=1000, random_state=0).fit(
        attack_features(shadow, shadow_labels, "top3", 2), shadow_membership)

    def classifier_auc(outputs: np.ndarray) -> float:
        return auc(classifier.predict_proba(attack_features(outputs, labels, "top3", 2))[:, 1])

    assert classifier_auc(logits) > 0.75 and abs(classifier_auc(released) - 0.5) < 0.05

    details = defense.details()
    assert details["max_expected_l1"] <= 1.0 + 1e-12 and details["mean_l1"] < 0.3
    assert details["noise_found_fraction"] > 0.95 and details["changed_fraction"] > 0.9


def test_the_defender_classifier_is_left_undecided(defense, evaluation, released):
    logits = evaluation[0]
    changed = np.abs(released - logits).max(axis=1) > 0
    with torch.no_grad():
        before = defense._log_odds(torch.as_tensor(logits)).numpy()
        after = defense._log_odds(torch.as_tensor(released)).numpy()
    assert np.abs(before).mean() > 1.0
    assert np.abs(after[changed]).max() < 1e-3, "noised rows sit on g's boundary"
    assert np.array_equal(after[~changed], before[~changed])


def test_the_budget_sets_the_chance_of_the_same_noise(evaluation):
    """Phase I does not depend on epsilon: a small budget releases each row either raw or with
    exactly the noise a full budget (2, the largest L1 distance) adds, the latter with
    probability epsilon / distortion."""
    logits = evaluation[0]
    full = fitted(epsilon=2.0).transform(logits)
    distortion = np.abs(probs(full) - probs(logits)).sum(axis=1)
    small = fitted(epsilon=0.05)
    released = small.transform(logits)
    noised = np.abs(released - logits).max(axis=1) > 0
    assert np.array_equal(released[noised], full[noised]) and np.array_equal(released[~noised], logits[~noised])
    chance = np.minimum(1.0, 0.05 / distortion)
    sd = np.sqrt((chance * (1 - chance)).sum())
    assert abs(noised.sum() - chance.sum()) < 4 * sd + 1
    assert small.details()["max_expected_l1"] <= 0.05 + 1e-12
    assert small.details()["mean_expected_l1"] == pytest.approx(np.minimum(distortion, 0.05).mean(), rel=1e-9)


def test_a_tiny_budget_barely_changes_the_outputs(evaluation):
    logits = evaluation[0]
    defense = fitted(epsilon=1e-4)
    released = defense.transform(logits)
    assert np.abs(probs(released) - probs(logits)).sum(axis=1).mean() < 1e-3
    assert defense.details()["changed_fraction"] < 0.02


def test_answers_are_fixed_per_query(defense, evaluation, released):
    """The phase II coin is a hash of the row: asking again, or in another batch, gives the
    same answer."""
    logits = evaluation[0]
    assert np.array_equal(defense.transform(logits), released)
    assert defense.transform(logits[::7]) == pytest.approx(released[::7], abs=1e-9)
    assert not np.array_equal(fitted(seed=5).transform(logits[::7]), released[::7])


def test_a_released_cnn_through_the_target_view():
    """A memorizing cnn behind TargetView: the querier gets the defense's answers, the labels
    of the raw model, and every noised answer leaves g undecided."""
    digits = load_dataset("digits")
    members, others = np.arange(0, 100), np.arange(100, 300)
    model = overfitted_cnn(digits, members, seed=0)
    defense = MemGuardRelease()
    known_members, known_others = members[:50], others[:100]
    defense.fit(predict_logits(model, digits.images[known_members]), predict_logits(model, digits.images[known_others]),
                digits.labels[known_members], digits.labels[known_others], seed=0)
    images = digits.images[np.r_[members[50:], others[100:]]]
    raw = predict_logits(model, images)
    view = TargetView(model, release=defense.transform)
    released = view.logits(images)
    assert np.array_equal(released, defense.transform(raw))
    assert np.array_equal(view.predicted_labels(images), raw.argmax(axis=1))
    changed = np.abs(released - raw).max(axis=1) > 0
    with torch.no_grad():
        odds = defense._log_odds(torch.as_tensor(released[changed])).numpy()
    assert changed.mean() > 0.5 and np.abs(odds).max() < 1e-3
    assert defense.details()["max_expected_l1"] <= 1.0


@pytest.mark.parametrize("params, words", [
    ({"epsilon": -0.1}, "epsilon=-0.1 is outside"),
    ({"epsilon": 2.5}, "epsilon=2.5 is outside"),
    ({"steps": 0}, "steps=0 is outside"),
    ({"steps": 1.5}, "steps must be a int"),
    ({"lr": 0.0}, "lr=0.0 is outside"),
    ({"label_weight": -1.0}, "label_weight=-1.0 is outside"),
    ({"hidden": 0}, "hidden=0 is outside"),
    ({"hidden": "wide"}, "hidden must be a int"),
    ({"c3": 1.0}, "no parameter 'c3'"),
])
def test_bad_parameters_raise_one_line(params, words):
    with pytest.raises(FedmiaError, match=words) as error:
        MemGuardRelease(**params)
    assert "\n" not in str(error.value)


def test_bad_fit_data_and_specs_raise_one_line():
    members, labels = planted(np.random.default_rng(0), 5, True)
    for args in [(members, members[:0]), (members[:, :1], members[:, :1]), (members, members[:, :3])]:
        with pytest.raises(FedmiaError) as error:
            MemGuardRelease().fit(*args, labels, labels, seed=0)
        assert "\n" not in str(error.value)
    with pytest.raises(FedmiaError, match="not key=value"):
        make_release("memguard:epsilon")
    assert make_release("memguard:epsilon=0.5:steps=50").params["steps"] == 50
    with pytest.raises(RuntimeError, match="must be fit"):
        MemGuardRelease().transform(members)
