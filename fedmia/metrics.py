"""Membership-inference metrics from per-sample scores, exactly as docs/PROTOCOL.md defines them.

Inputs are plain arrays: `scores` (higher = more likely member) and `labels` (1 = member).

Two epsilon lower bounds: `epsilon_lower_bound` maximises over every threshold of one ROC on
the labels it is computed from, so its 95% level is nominal (reported as *optimistic*);
`held_out_bound` chooses the attack and the threshold on one half of the evaluation set and
evaluates that single threshold on the other half, where Clopper-Pearson's 95% holds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import beta
from sklearn.metrics import roc_auc_score, roc_curve

LOW_FPRS = (0.01, 0.001)
CONFIDENCE = 0.95
#: Values of the per-sample `halves` array of a scope's evaluation set.
SELECTION_HALF, BOUND_HALF = 0, 1
HELD_OUT_PROCEDURE = ("split-half: attack and threshold chosen on the selection half (largest "
                      "Clopper-Pearson bound there), bound computed at that one threshold on the "
                      "bound half")


@dataclass(frozen=True)
class AttackMetrics:
    """Threshold-free metrics of one attack on one scope. A TPR at a low FPR is None when
    there are fewer than 1/FPR non-members (it would rest on less than one false positive)."""

    auc: float
    balanced_accuracy: float
    advantage: float
    tpr_at_1pct_fpr: float | None
    tpr_at_01pct_fpr: float | None
    eps_lower_bound_optimistic: float
    delta: float
    n_members: int
    n_nonmembers: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(int)
    if scores.shape != labels.shape or scores.ndim != 1:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} must be equal 1-D arrays")
    if not set(np.unique(labels)) == {0, 1}:
        raise ValueError("labels must contain both members (1) and non-members (0)")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores must be finite")
    return scores, labels


def roc(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, TPR) at every distinct threshold, from (0, 0) to (1, 1)."""
    scores, labels = _check(scores, labels)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return fpr, tpr


def tpr_at_fpr(fpr: np.ndarray, tpr: np.ndarray, max_fpr: float, n_nonmembers: int) -> float | None:
    """Largest TPR over thresholds with FPR <= max_fpr, no interpolation; None below 1/max_fpr
    non-members."""
    if n_nonmembers < round(1 / max_fpr):
        return None
    return float(tpr[fpr <= max_fpr + 1e-12].max())


def clopper_pearson_upper(errors: np.ndarray, trials: int, confidence: float = CONFIDENCE) -> np.ndarray:
    """Upper end of the two-sided Clopper-Pearson interval for a binomial rate."""
    errors = np.asarray(errors, dtype=np.float64)
    upper = beta.ppf(1 - (1 - confidence) / 2, errors + 1, trials - errors)
    return np.where(errors >= trials, 1.0, upper)


def epsilon_bounds(false_positives: np.ndarray, false_negatives: np.ndarray, n_members: int,
                   n_nonmembers: int, delta: float, confidence: float = CONFIDENCE) -> np.ndarray:
    """PROTOCOL.md's bound at each threshold given by its error counts: with Clopper-Pearson upper
    ends FPR_u and FNR_u, the larger of log((1 - delta - FPR_u) / FNR_u) and
    log((1 - delta - FNR_u) / FPR_u), skipping terms whose numerator is not positive; 0 where no
    term qualifies. Each upper end is a one-sided 97.5% bound, so both hold together with
    probability at least 95%, and then both terms are valid: the larger of them is too."""
    fpr_upper = clopper_pearson_upper(false_positives, n_nonmembers, confidence)
    fnr_upper = clopper_pearson_upper(false_negatives, n_members, confidence)
    best = np.zeros(np.shape(fpr_upper))
    for numerator, denominator in ((1 - delta - fpr_upper, fnr_upper), (1 - delta - fnr_upper, fpr_upper)):
        valid = (numerator > 0) & (denominator > 0)
        ratio = np.where(valid, numerator, 1.0) / np.where(valid, denominator, 1.0)
        best = np.maximum(best, np.where(valid, np.log(ratio), 0.0))
    return best


def _error_counts(fpr: np.ndarray, tpr: np.ndarray, n_members: int,
                  n_nonmembers: int) -> tuple[np.ndarray, np.ndarray]:
    return np.rint(fpr * n_nonmembers), np.rint((1 - tpr) * n_members)


def epsilon_lower_bound(fpr: np.ndarray, tpr: np.ndarray, n_members: int, n_nonmembers: int,
                        delta: float, confidence: float = CONFIDENCE) -> float:
    """The largest bound over every threshold of one ROC. Optimistic when the ROC comes from the
    labels the bound is reported for: maximising over thresholds spends the 95% level."""
    counts = _error_counts(fpr, tpr, n_members, n_nonmembers)
    return float(epsilon_bounds(*counts, n_members, n_nonmembers, delta, confidence).max())


@dataclass(frozen=True)
class HeldOutBound:
    """A measured epsilon lower bound whose 95% level holds: the attack and its threshold
    (member when score >= threshold) were chosen on the selection half only; the bound is
    PROTOCOL.md's formula at that single threshold on the bound half, whose counts are here."""

    eps_lower_bound: float
    attack: str
    threshold: float
    selection_bound: float
    n_members: int
    n_nonmembers: int
    false_positives: int
    false_negatives: int
    delta: float
    confidence: float = CONFIDENCE
    procedure: str = HELD_OUT_PROCEDURE

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def choose_threshold(scores: np.ndarray, labels: np.ndarray, delta: float) -> tuple[float, float, float]:
    """(threshold, bound, advantage) of the threshold with the largest bound on these labels,
    ties (all zero, typically) broken by the largest TPR - FPR, then by the highest threshold."""
    scores, labels = _check(scores, labels)
    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    # The first ROC point is sklearn's +inf threshold, which flags no one: not a usable choice.
    fpr, tpr, thresholds = fpr[1:], tpr[1:], thresholds[1:]
    n_members, n_nonmembers = int(labels.sum()), int((1 - labels).sum())
    bounds = epsilon_bounds(*_error_counts(fpr, tpr, n_members, n_nonmembers), n_members,
                            n_nonmembers, delta)
    advantage = tpr - fpr
    best = int(np.lexsort((thresholds, advantage, bounds))[-1])
    return float(thresholds[best]), float(bounds[best]), float(advantage[best])


def held_out_bound(scores_by_attack: dict[str, np.ndarray], labels: np.ndarray, halves: np.ndarray,
                   delta: float) -> HeldOutBound:
    """The split-half bound of one scope: every attack chooses its threshold on the selection
    half, the attack whose selection-half bound is largest is kept, and its single threshold is
    evaluated on the bound half, whose labels took no part in any choice."""
    labels, halves = np.asarray(labels).astype(int), np.asarray(halves)
    selection, held_out = halves == SELECTION_HALF, halves == BOUND_HALF
    choices = {name: choose_threshold(np.asarray(scores)[selection], labels[selection], delta)
               for name, scores in scores_by_attack.items()}
    attack = max(choices, key=lambda name: choices[name][1:])
    threshold, selection_bound, _ = choices[attack]
    scores, truth = np.asarray(scores_by_attack[attack], dtype=np.float64)[held_out], labels[held_out]
    flagged = scores >= threshold
    n_members, n_nonmembers = int(truth.sum()), int((1 - truth).sum())
    false_positives = int((flagged & (truth == 0)).sum())
    false_negatives = int((~flagged & (truth == 1)).sum())
    bound = 0.0
    if n_members and n_nonmembers:
        bound = float(epsilon_bounds(np.array([false_positives]), np.array([false_negatives]),
                                     n_members, n_nonmembers, delta)[0])
    return HeldOutBound(bound, attack, threshold, selection_bound, n_members, n_nonmembers,
                        false_positives, false_negatives, delta)


def membership_metrics(scores: np.ndarray, labels: np.ndarray, delta: float) -> AttackMetrics:
    """Every PROTOCOL.md metric of one attack's scores against the true membership labels."""
    scores, labels = _check(scores, labels)
    fpr, tpr = roc(scores, labels)
    n_members, n_nonmembers = int(labels.sum()), int((1 - labels).sum())
    return AttackMetrics(
        auc=float(roc_auc_score(labels, scores)),
        balanced_accuracy=float(((tpr + 1 - fpr) / 2).max()),
        advantage=float((tpr - fpr).max()),
        tpr_at_1pct_fpr=tpr_at_fpr(fpr, tpr, LOW_FPRS[0], n_nonmembers),
        tpr_at_01pct_fpr=tpr_at_fpr(fpr, tpr, LOW_FPRS[1], n_nonmembers),
        eps_lower_bound_optimistic=epsilon_lower_bound(fpr, tpr, n_members, n_nonmembers, delta),
        delta=delta,
        n_members=n_members,
        n_nonmembers=n_nonmembers,
    )
