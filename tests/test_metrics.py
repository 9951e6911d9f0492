"""Protocol metrics against values computed by hand."""

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from fedmia.metrics import (
    clopper_pearson_upper,
    epsilon_lower_bound,
    membership_metrics,
    roc,
    tpr_at_fpr,
)

# Scores (higher = member) and labels, sorted by score:
#   0.9 M, 0.8 M, 0.7 N, 0.6 M, 0.5 N, 0.4 N, 0.3 M, 0.2 N
SCORES = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
LABELS = np.array([1, 1, 0, 1, 0, 0, 1, 0])


def test_auc_balanced_accuracy_and_advantage_by_hand():
    metrics = membership_metrics(SCORES, LABELS, delta=1e-5)
    # Pairs (member > non-member): 0.9 and 0.8 beat all 4, 0.6 beats 3, 0.3 beats 1 -> 12 / 16.
    assert metrics.auc == pytest.approx(12 / 16)
    # Best threshold 0.8 (TPR 2/4, FPR 0) or 0.6 (TPR 3/4, FPR 1/4): TPR - FPR = 0.5.
    assert metrics.advantage == pytest.approx(0.5)
    assert metrics.balanced_accuracy == pytest.approx(0.75)
    assert (metrics.n_members, metrics.n_nonmembers) == (4, 4)


def test_low_fpr_tpr_is_null_below_one_over_fpr_non_members():
    metrics = membership_metrics(SCORES, LABELS, delta=1e-5)
    assert metrics.tpr_at_1pct_fpr is None and metrics.tpr_at_01pct_fpr is None


def test_tpr_at_fpr_takes_the_largest_tpr_without_interpolation():
    fpr = np.array([0.0, 0.005, 0.01, 0.02, 1.0])
    tpr = np.array([0.0, 0.30, 0.40, 0.90, 1.0])
    assert tpr_at_fpr(fpr, tpr, 0.01, 100) == 0.40
    assert tpr_at_fpr(fpr, tpr, 0.001, 1000) == 0.0
    assert tpr_at_fpr(fpr, tpr, 0.001, 999) is None


def test_roc_starts_at_origin_and_ends_at_one():
    fpr, tpr = roc(SCORES, LABELS)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)


@pytest.mark.parametrize("errors, trials", [(0, 50), (3, 50), (20, 100), (100, 100)])
def test_clopper_pearson_upper_matches_scipys_exact_interval(errors, trials):
    expected = binomtest(errors, trials).proportion_ci(0.95, method="exact").high
    assert clopper_pearson_upper(np.array([errors]), trials)[0] == pytest.approx(expected)


def test_epsilon_lower_bound_on_a_case_computed_by_hand():
    # One threshold: no false positives among 1000 non-members, 500 false negatives of 1000.
    fpr, tpr = np.array([0.0, 0.0, 1.0]), np.array([0.0, 0.5, 1.0])
    fpr_u = binomtest(0, 1000).proportion_ci(0.95, method="exact").high
    fnr_u = binomtest(500, 1000).proportion_ci(0.95, method="exact").high
    delta = 1e-5
    expected = max(math.log((1 - delta - fnr_u) / fpr_u), math.log((1 - delta - fpr_u) / fnr_u))
    assert epsilon_lower_bound(fpr, tpr, 1000, 1000, delta) == pytest.approx(expected)
    assert expected == pytest.approx(math.log(0.4685 / 0.00368), abs=0.01)  # about 4.85


def test_random_scores_give_no_evidence_of_leakage():
    rng = np.random.default_rng(0)
    labels = np.r_[np.ones(500), np.zeros(500)]
    metrics = membership_metrics(rng.random(1000), labels, delta=1e-5)
    assert abs(metrics.auc - 0.5) < 0.05 and metrics.eps_lower_bound < 0.3


@pytest.mark.parametrize("scores, labels", [([0.1, 0.2], [1, 1]), ([0.1], [1, 0]), ([np.nan, 0.1], [1, 0])])
def test_malformed_inputs_are_rejected(scores, labels):
    with pytest.raises(ValueError):
        membership_metrics(np.array(scores), np.array(labels), 1e-5)
