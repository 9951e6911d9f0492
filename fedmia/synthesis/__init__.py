"""Synthetic training data for the defenses that replace private records (seed 000): a small
diffusion model trained on a client's private images, and a check that its samples are not
copies of them."""

from fedmia.synthesis.diffusion import (
    DiffusionRecipe,
    SampleBatch,
    TrainedDiffusion,
    denoising_loss,
    sample,
    train_diffusion,
)
from fedmia.synthesis.memorization import MemorizationReport, closest_pairs_grid, memorization_check

__all__ = [
    "DiffusionRecipe",
    "MemorizationReport",
    "SampleBatch",
    "TrainedDiffusion",
    "closest_pairs_grid",
    "denoising_loss",
    "memorization_check",
    "sample",
    "train_diffusion",
]
