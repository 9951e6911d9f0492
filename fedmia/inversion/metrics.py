"""How close reconstructions come to the records they stand for (docs/PROTOCOL.md, Inversion).

Images are compared in [0, 1]: PSNR with data range 1, SSIM (scikit-image), MSE. A batch of
reconstructions has no order of its own, so each is paired with a distinct ground-truth record
by optimal assignment on MSE (the pairing the attack would most like); labels count as recovered
where the attack's label equals its paired record's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from skimage.metrics import structural_similarity

from fedmia.inversion.base import NO_LABEL

#: PSNR of an exact copy, which is infinite: capped so means and JSON stay finite.
PSNR_CAP = 100.0


def pairwise_mse(reconstructed: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """MSE between every reconstruction (rows) and every record (columns)."""
    flat_r = reconstructed.reshape(len(reconstructed), -1).astype(np.float64)
    flat_t = truth.reshape(len(truth), -1).astype(np.float64)
    squared = (flat_r**2).sum(1)[:, None] + (flat_t**2).sum(1)[None, :] - 2 * flat_r @ flat_t.T
    return np.maximum(squared, 0.0) / flat_r.shape[1]


def match(reconstructed: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """For each reconstruction, the index of its distinct ground-truth record (minimum total
    MSE). With more reconstructions than records, the extra ones get -1."""
    rows, columns = linear_sum_assignment(pairwise_mse(reconstructed, truth))
    paired = np.full(len(reconstructed), -1, dtype=np.int64)
    paired[rows] = columns
    return paired


def psnr(reconstructed: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-image PSNR in dB for images in [0, 1], capped at PSNR_CAP."""
    mse = ((reconstructed.astype(np.float64) - truth) ** 2).reshape(len(truth), -1).mean(1)
    with np.errstate(divide="ignore"):
        return np.minimum(10 * np.log10(1.0 / mse), PSNR_CAP)


def ssim(reconstructed: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-image SSIM (channels averaged); the window shrinks to fit 8x8 images."""
    side = min(truth.shape[-2:])
    window = min(7, side if side % 2 else side - 1)
    return np.array([
        structural_similarity(r.astype(np.float64), t.astype(np.float64), data_range=1.0,
                              channel_axis=0, win_size=window)
        for r, t in zip(reconstructed, truth)
    ])


@dataclass(frozen=True)
class ReconstructionMetrics:
    """Means over the paired reconstructions, and label recovery (None: the attack gave no
    labels)."""

    psnr: float
    ssim: float
    mse: float
    label_accuracy: float | None
    images: int

    def to_dict(self) -> dict[str, Any]:
        return {"psnr": self.psnr, "ssim": self.ssim, "mse": self.mse,
                "label_accuracy": self.label_accuracy, "images": self.images}


@dataclass(frozen=True)
class ScoredReconstruction:
    """The metrics, the per-image numbers, and each reconstruction's paired record index."""

    metrics: ReconstructionMetrics
    paired: np.ndarray
    psnr: np.ndarray
    ssim: np.ndarray


def score_reconstruction(images: np.ndarray, labels: np.ndarray, truth_images: np.ndarray,
                         truth_labels: np.ndarray) -> ScoredReconstruction:
    """Pair, then measure. Reconstructions left unpaired (more than the records) are not
    counted."""
    if images.shape[1:] != truth_images.shape[1:]:
        raise ValueError(f"reconstructions {images.shape[1:]} and records {truth_images.shape[1:]} differ in shape")
    paired = match(images, truth_images)
    kept = paired >= 0
    mine, theirs = images[kept], truth_images[paired[kept]]
    per_psnr, per_ssim = psnr(mine, theirs), ssim(mine, theirs)
    mse = float(((mine.astype(np.float64) - theirs) ** 2).mean()) if len(mine) else float("nan")
    labelled = labels[kept] != NO_LABEL
    label_accuracy = (float((labels[kept] == truth_labels[paired[kept]]).mean())
                      if len(mine) and labelled.all() else None)
    metrics = ReconstructionMetrics(float(per_psnr.mean()) if len(mine) else float("nan"),
                                    float(per_ssim.mean()) if len(mine) else float("nan"), mse,
                                    label_accuracy, int(kept.sum()))
    return ScoredReconstruction(metrics, paired, per_psnr, per_ssim)
