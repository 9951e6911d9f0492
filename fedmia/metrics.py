"""Membership-inference metrics from per-sample scores, exactly as PROTOCOL.md defines them.

Inputs are plain arrays: `scores` (higher = more likely member) and `labels` (1 = member).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.stats import beta
from sklearn.metrics import roc_auc_score, roc_curve

LOW_FPRS = (0.01, 0.001)
CONFIDENCE = 0.95


@dataclass(frozen=True)
class AttackMetrics:
    """Threshold-free metrics of one attack on one scope. A TPR at a low FPR is None when
    there are fewer than 1/FPR non-members (it would rest on less than one false positive)."""

    auc: float
    balanced_accuracy: float
    advantage: float
    tpr_at_1pct_fpr: float | None
    tpr_at_01pct_fpr: float | None
    eps_lower_bound: float
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


def epsilon_lower_bound(fpr: np.ndarray, tpr: np.ndarray, n_members: int, n_nonmembers: int,
                        delta: float, confidence: float = CONFIDENCE) -> float:
    """Audit-style lower bound on epsilon from one ROC, as PROTOCOL.md defines it: at each
    threshold, with Clopper-Pearson upper bounds on FPR and FNR, the larger of
    log((1 - delta - FPR_u) / FNR_u) and log((1 - delta - FNR_u) / FPR_u); the largest over
    thresholds, skipping terms whose numerator is not positive. 0 when no term qualifies."""
    false_positives = np.rint(fpr * n_nonmembers)
    false_negatives = np.rint((1 - tpr) * n_members)
    fpr_upper = clopper_pearson_upper(false_positives, n_nonmembers, confidence)
    fnr_upper = clopper_pearson_upper(false_negatives, n_members, confidence)
    best = 0.0
    for numerator, denominator in ((1 - delta - fpr_upper, fnr_upper), (1 - delta - fnr_upper, fpr_upper)):
        valid = (numerator > 0) & (denominator > 0)
        if valid.any():
            best = max(best, float(np.log(numerator[valid] / denominator[valid]).max()))
    return best


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
        eps_lower_bound=epsilon_lower_bound(fpr, tpr, n_members, n_nonmembers, delta),
        delta=delta,
        n_members=n_members,
        n_nonmembers=n_nonmembers,
    )
