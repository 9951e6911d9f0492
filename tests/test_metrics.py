"""Protocol metrics against values computed by hand."""

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from fedmia.metrics import (
    BOUND_HALF,
    SELECTION_HALF,
    clopper_pearson_upper,
    epsilon_lower_bound,
    held_out_bound,
    membership_metrics,
    roc,
    tpr_at_fpr,
)

# Scores (higher = member) and labels, sorted by score:
#   0.9 M, 0.8 M, 0.7 N, 0.6 M, 0.5 N, 0.4 N, 0.3 M, 0.2 N
SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
LABELS = np.array([1, 1, 0, 1, 0, 0, 1, 0])
DELTA = 1e-5


def exact_upper(errors: int, trials: int) -> float:
    return binomtest(errors, trials).proportion_ci(0.95, method="exact").high


def test_auc_balanced_accuracy_and_advantage_by_hand():
    metrics = membership_metrics(SCORES, LABELS, delta=DELTA)
    # Pairs (member > non-member): 0.9 and 0.8 beat all 4, 0.6 beats 3, 0.3 beats 1 -> 12 / 16.
    assert metrics.auc == pytest.approx(12 / 16)
    # Thresholds 0.8 (TPR 2/4, FPR 0) and 0.6 (TPR 3/4, FPR 1/4) both give TPR - FPR = 0.5,
    # and balanced accuracy (TPR + TNR) / 2 = 0.75; no threshold does better.
    assert metrics.advantage == pytest.approx(0.5)
    assert metrics.balanced_accuracy == pytest.approx(0.75)
    assert (metrics.n_members, metrics.n_nonmembers, metrics.delta) == (4, 4, DELTA)


def test_auc_counts_a_tie_as_half_a_pair():
    # Member 1.0 vs non-members 1.0 (tie: 1/2) and 0.0 (win: 1) -> 1.5 / 2.
    metrics = membership_metrics(np.array([1.0, 1.0, 0.0]), np.array([1, 0, 0]), delta=DELTA)
    assert metrics.auc == pytest.approx(0.75)
    assert metrics.advantage == pytest.approx(0.5)


def test_perfect_and_inverted_scores():
    perfect = membership_metrics(SCORES, (SCORES > 0.55).astype(int), delta=DELTA)
    assert (perfect.auc, perfect.advantage, perfect.balanced_accuracy) == (1.0, 1.0, 1.0)
    inverted = membership_metrics(-SCORES, (SCORES > 0.55).astype(int), delta=DELTA)
    assert inverted.auc == 0.0 and inverted.advantage == 0.0 and inverted.balanced_accuracy == 0.5


def test_low_fpr_tpr_is_null_below_one_over_fpr_non_members():
    metrics = membership_metrics(SCORES, LABELS, delta=DELTA)
    assert metrics.tpr_at_1pct_fpr is None and metrics.tpr_at_01pct_fpr is None


def low_fpr_case(n_nonmembers: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-members score 0..n-1; 30 members score above all of them, 20 between the top two
    non-members, 50 below every one. At FPR 1/n: TPR 0.5; FPR 0: TPR 0.3."""
    nonmembers = np.arange(n_nonmembers, dtype=float)
    top = n_nonmembers - 1
    members = np.r_[np.full(30, top + 0.5), np.full(20, top - 0.5), np.full(50, -1.0)]
    scores = np.r_[members, nonmembers]
    return scores, np.r_[np.ones(len(members)), np.zeros(n_nonmembers)].astype(int)


def test_tpr_at_low_fpr_by_hand_with_enough_non_members():
    at_100 = membership_metrics(*low_fpr_case(100), delta=DELTA)
    assert at_100.tpr_at_1pct_fpr == pytest.approx(0.5) and at_100.tpr_at_01pct_fpr is None
    at_1000 = membership_metrics(*low_fpr_case(1000), delta=DELTA)
    # FPR 1% allows 10 false positives: every member above -1 is caught; FPR 0.1%: one.
    assert at_1000.tpr_at_1pct_fpr == pytest.approx(0.5)
    assert at_1000.tpr_at_01pct_fpr == pytest.approx(0.5)


def test_tpr_at_fpr_takes_the_largest_tpr_without_interpolation():
    fpr = np.array([0.0, 0.005, 0.01, 0.02, 1.0])
    tpr = np.array([0.0, 0.30, 0.40, 0.90, 1.0])
    assert tpr_at_fpr(fpr, tpr, 0.01, 100) == 0.40
    assert tpr_at_fpr(fpr, tpr, 0.015, 100) == 0.40, "no interpolation towards (0.02, 0.9)"
    assert tpr_at_fpr(fpr, tpr, 0.001, 1000) == 0.0
    assert tpr_at_fpr(fpr, tpr, 0.001, 999) is None


def test_roc_has_one_point_per_distinct_threshold_from_origin_to_one():
    fpr, tpr = roc(SCORES, LABELS)
    assert fpr.tolist() == [0, 0, 0, 0.25, 0.25, 0.5, 0.75, 0.75, 1.0]
    assert tpr.tolist() == [0, 0.25, 0.5, 0.5, 0.75, 0.75, 0.75, 1.0, 1.0]


@pytest.mark.parametrize("errors, trials", [(0, 50), (3, 50), (20, 100), (100, 100), (1, 1)])
def test_clopper_pearson_upper_matches_scipys_exact_interval(errors, trials):
    upper = clopper_pearson_upper(np.array([errors]), trials)[0]
    assert upper == pytest.approx(exact_upper(errors, trials))


def test_clopper_pearson_upper_over_every_error_count():
    expected = [exact_upper(k, 37) for k in range(38)]
    np.testing.assert_allclose(clopper_pearson_upper(np.arange(38), 37), expected, rtol=1e-9)


def test_clopper_pearson_upper_with_no_errors_by_hand():
    # 0 errors in n trials: the upper end solves (1 - p)^n = 0.025.
    assert clopper_pearson_upper(np.array([0]), 1000)[0] == pytest.approx(1 - 0.025 ** (1 / 1000))


def test_epsilon_lower_bound_on_a_case_computed_by_hand():
    # One threshold: no false positives among 1000 non-members, 500 false negatives of 1000.
    fpr, tpr = np.array([0.0, 0.0, 1.0]), np.array([0.0, 0.5, 1.0])
    fpr_u = 1 - 0.025 ** (1 / 1000)  # about 0.00368
    fnr_u = exact_upper(500, 1000)  # about 0.5315
    expected = max(math.log((1 - DELTA - fnr_u) / fpr_u), math.log((1 - DELTA - fpr_u) / fnr_u))
    assert epsilon_lower_bound(fpr, tpr, 1000, 1000, DELTA) == pytest.approx(expected)
    assert expected == pytest.approx(math.log(0.4685 / 0.00368), abs=0.01)  # about 4.85


def test_epsilon_lower_bound_uses_the_false_negative_side_too():
    # Mirror image of the case above: every member caught (FNR 0), half the non-members
    # flagged (FPR 0.5).
    zero_then_one, half_way = np.array([0.0, 0.0, 1.0]), np.array([0.0, 0.5, 1.0])
    original = epsilon_lower_bound(zero_then_one, half_way, 1000, 1000, DELTA)
    mirrored = epsilon_lower_bound(half_way, np.array([0.0, 1.0, 1.0]), 1000, 1000, DELTA)
    assert mirrored == pytest.approx(original) and mirrored > 4


def test_epsilon_lower_bound_skips_terms_without_a_positive_numerator():
    # Ten samples each, 9 false positives and 9 false negatives: 1 - delta - rate_u < 0 on both sides.
    assert epsilon_lower_bound(np.array([0.9]), np.array([0.1]), 10, 10, DELTA) == 0.0


def test_no_evidence_when_members_and_non_members_share_their_scores():
    """TPR = FPR at every threshold, so FPR_u + FNR_u >= 1 and no term is positive."""
    scores = np.random.default_rng(0).random(500)
    metrics = membership_metrics(np.r_[scores, scores], np.r_[np.ones(500), np.zeros(500)], DELTA)
    assert metrics.eps_lower_bound_optimistic == 0.0 and metrics.auc == 0.5 and metrics.advantage == 0.0
    constant = membership_metrics(np.zeros(200), np.r_[np.ones(100), np.zeros(100)], DELTA)
    assert constant.eps_lower_bound_optimistic == 0.0 and constant.auc == 0.5


def test_random_scores_give_no_meaningful_evidence_of_leakage():
    labels = np.r_[np.ones(500), np.zeros(500)]
    bounds = []
    for seed in range(10):
        metrics = membership_metrics(np.random.default_rng(seed).random(1000), labels, DELTA)
        assert abs(metrics.auc - 0.5) < 0.05
        bounds.append(metrics.eps_lower_bound_optimistic)
    assert max(bounds) < 0.2 and sorted(bounds)[5] == 0.0


def by_hand_bound(false_positives: int, n_nonmembers: int, false_negatives: int, n_members: int) -> float:
    fpr_u, fnr_u = exact_upper(false_positives, n_nonmembers), exact_upper(false_negatives, n_members)
    terms = [math.log(num / den) for num, den in ((1 - DELTA - fpr_u, fnr_u), (1 - DELTA - fnr_u, fpr_u))
             if num > 0]
    return max([0.0, *terms])


def held_out_case() -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """200 members and 200 non-members per half. Attack `sharp` separates the selection half
    perfectly at score 1 (members 1.0 .. 1.99, non-members 0.0 .. 0.99); on the bound half 20
    non-members score 1.5 and 30 members score 0.5, so at threshold 1: 20 false positives and
    30 false negatives. Attack `dull` scores every sample by chance."""
    n = 200
    selection_scores = np.r_[1 + np.arange(n) / n, np.arange(n) / n]
    bound_members = np.r_[np.full(n - 30, 1.7), np.full(30, 0.5)]
    bound_nonmembers = np.r_[np.full(20, 1.5), np.full(n - 20, 0.2)]
    sharp = np.r_[selection_scores, bound_members, bound_nonmembers]
    labels = np.r_[np.ones(n), np.zeros(n), np.ones(n), np.zeros(n)].astype(int)
    halves = np.r_[np.full(2 * n, SELECTION_HALF), np.full(2 * n, BOUND_HALF)]
    dull = np.random.default_rng(5).random(4 * n)
    return {"dull": dull, "sharp": sharp}, labels, halves


def test_held_out_bound_is_the_formula_at_one_threshold_on_the_bound_half():
    scores, labels, halves = held_out_case()
    bound = held_out_bound(scores, labels, halves, DELTA)
    assert (bound.attack, bound.threshold) == ("sharp", 1.0)
    assert (bound.n_members, bound.n_nonmembers, bound.false_positives, bound.false_negatives) == (200, 200, 20, 30)
    assert bound.eps_lower_bound == pytest.approx(by_hand_bound(20, 200, 30, 200))
    assert bound.selection_bound == pytest.approx(by_hand_bound(0, 200, 0, 200))
    # The optimistic figure on all labels sweeps thresholds on the bound half too, so it is larger.
    optimistic = membership_metrics(scores["sharp"], labels, DELTA).eps_lower_bound_optimistic
    assert optimistic > bound.eps_lower_bound + 0.5


def test_held_out_choice_never_reads_the_bound_half_labels():
    scores, labels, halves = held_out_case()
    first = held_out_bound(scores, labels, halves, DELTA)
    shuffled = labels.copy()
    bound_part = np.flatnonzero(halves == BOUND_HALF)
    shuffled[bound_part] = np.random.default_rng(0).permutation(labels[bound_part])
    again = held_out_bound(scores, shuffled, halves, DELTA)
    assert (again.attack, again.threshold, again.selection_bound) == (first.attack, first.threshold,
                                                                       first.selection_bound)
    assert again.eps_lower_bound < first.eps_lower_bound


def test_held_out_bound_keeps_its_confidence_where_the_optimistic_figure_does_not():
    """No leakage at all (five attacks scoring at random, true epsilon 0): a positive bound is a
    false claim. Choosing attack and threshold on the same labels makes such claims far more
    often than 5%; the held-out bound must stay within its 5%."""
    n, trials = 100, 100
    labels = np.r_[np.ones(n), np.zeros(n)].astype(int)
    halves = np.tile([SELECTION_HALF, BOUND_HALF], n)
    held_out_claims = optimistic_claims = 0
    for trial in range(trials):
        rng = np.random.default_rng(trial)
        scores = {f"attack{i}": rng.random(2 * n) for i in range(5)}
        held_out_claims += held_out_bound(scores, labels, halves, DELTA).eps_lower_bound > 0
        optimistic_claims += max(membership_metrics(s, labels, DELTA).eps_lower_bound_optimistic
                                 for s in scores.values()) > 0
    assert optimistic_claims / trials > 0.10
    assert held_out_claims / trials <= 0.05


def test_held_out_bound_is_zero_when_the_bound_half_lacks_a_class_of_sample():
    scores = {"loss": np.array([0.9, 0.1, 0.8, 0.7])}
    bound = held_out_bound(scores, np.array([1, 0, 1, 1]), np.array([0, 0, 1, 1]), DELTA)
    assert bound.eps_lower_bound == 0.0 and (bound.n_members, bound.n_nonmembers) == (2, 0)


@pytest.mark.parametrize("scores, labels", [([0.1, 0.2], [1, 1]), ([0.1], [1, 0]),
                                            ([np.nan, 0.1], [1, 0]), ([np.inf, 0.1], [1, 0]),
                                            ([0.1, 0.2], [1, 2])])
def test_malformed_inputs_are_rejected(scores, labels):
    with pytest.raises(ValueError):
        membership_metrics(np.array(scores), np.array(labels), DELTA)
