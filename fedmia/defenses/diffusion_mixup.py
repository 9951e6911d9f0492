"""`diffusion-mixup` (seed 000): train the released model on less of the private data.

Preparation, once per client (then from the cache):
1. a DDPM on the client's records (diffusers' `UNet2DModel`; unconditional, or class-conditional
   with classifier-free guidance weight `guidance`, the seed's 1.8), sampled with DDIM in
   `sample_steps` steps (`fedmia.synthesis`);
2. a teacher, the run's architecture trained on the records (`teacher`);
3. the teacher labels every sample with its softmax (a soft label), and samples whose top
   probability is below `confidence` are dropped;
4. a memorization check (Carlini et al. 2023: diffusion models can copy their training
   images): each sample's distance to its nearest record, in pixels and in the teacher's
   features, against the distance from real non-member images to their nearest record (the
   public pool when the run has one; otherwise half of the records stand in as non-members of
   the other half, and the samples are checked against that half), and a grid of the closest
   pairs.

Every round then trains on a fresh random `private_fraction` of the records plus all kept
samples, each batch mixed with mixup (Beta(alpha, alpha)). Records left out of a round look like
non-members to an attacker. The diffusion model and the teacher read the records without DP, so
composed with `dpsgd` the epsilon covers only the noisy steps (the report says so).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fedmia.defenses.base import ClientData, PrepareContext, RoundContext, check_param, check_whole
from fedmia.defenses.cache import Prepared, PreparationRecord, content_key
from fedmia.defenses.mixup import mix_pairs
from fedmia.defenses.recipe import DataSource, Recipe, RecipeDefense, TrainingSet
from fedmia.defenses.teacher import penultimate_features, soft_labels, train_teacher
from fedmia.errors import FedmiaError
from fedmia.seeding import round_seed

if TYPE_CHECKING:
    from fedmia.synthesis import DiffusionRecipe

SYNTHESIS_READS_RECORDS = "the diffusion model and the teacher trained on the client's records without DP"
#: Seed keys of the preparation's steps.
DIFFUSION_KEY, SAMPLING_KEY = 1, 2
GRID_FILE = "closest-pairs.png"


class SubsetWithSynthetic(DataSource):
    """Each round: a random fraction of the records, one-hot, plus the synthetic samples with
    their soft labels; batches mixed."""

    outside_privatizer = SYNTHESIS_READS_RECORDS

    def __init__(self, fraction: float, images: np.ndarray, targets: np.ndarray, alpha: float) -> None:
        self.fraction, self.images, self.targets = fraction, images, targets
        self.mixer = mix_pairs(alpha)

    def training_set(self, data: ClientData, context: RoundContext) -> TrainingSet:
        rng = np.random.default_rng(round_seed(context.seed, 5))
        chosen = np.sort(rng.permutation(len(data))[: max(1, round(self.fraction * len(data)))])
        private_targets = np.eye(data.num_classes, dtype=np.float32)[data.labels[chosen]]
        return TrainingSet(
            np.concatenate([data.images[chosen], self.images]),
            np.concatenate([data.labels[chosen], self.targets.argmax(1)]),
            np.concatenate([private_targets, self.targets]),
            np.concatenate([np.ones(len(chosen), dtype=bool), np.zeros(len(self.images), dtype=bool)]))


class DiffusionMixup(RecipeDefense):
    name = "diffusion-mixup"
    prepares = True

    def __init__(self, private_fraction: float = 0.5, synthetic: int = 0, confidence: float = 0.7,
                 alpha: float = 1.0, teacher_epochs: int = 20, diffusion_steps: int = 0,
                 conditional: bool = False, guidance: float = 1.8, sample_steps: int = 25) -> None:
        self.private_fraction = check_param("private_fraction", private_fraction, 0.0, 1.0, defense=self.name)
        self.synthetic = check_whole("synthetic", synthetic, 0, 1_000_000, defense=self.name)
        self.confidence = check_param("confidence", confidence, 0.0, 1.0, defense=self.name)
        self.alpha = check_param("alpha", alpha, 1e-3, 100.0, defense=self.name)
        self.teacher_epochs = check_whole("teacher_epochs", teacher_epochs, 1, 10_000, defense=self.name)
        self.diffusion_steps = check_whole("diffusion_steps", diffusion_steps, 0, 10_000_000, defense=self.name)
        if not isinstance(conditional, bool):
            raise FedmiaError(f"defense 'diffusion-mixup': conditional={conditional!r} must be true or false")
        self.conditional = conditional
        self.guidance = check_param("guidance", guidance, 0.0, 100.0, defense=self.name)
        self.sample_steps = check_whole("sample_steps", sample_steps, 1, 1000, defense=self.name)
        self.data: SubsetWithSynthetic | None = None

    def recipe(self, image_shape: tuple[int, int, int]) -> DiffusionRecipe:
        from fedmia.synthesis import DiffusionRecipe

        steps = {"train_steps": self.diffusion_steps} if self.diffusion_steps else {}
        return DiffusionRecipe.for_shape(image_shape, conditional=self.conditional, guidance=self.guidance,
                                         sample_steps=self.sample_steps, **steps)

    def prepare(self, data: ClientData, setup: PrepareContext) -> list[PreparationRecord]:
        teacher, teacher_record = train_teacher(data, setup, self.teacher_epochs)
        recipe = self.recipe(data.images.shape[1:])
        count = self.synthetic or len(data)
        key = content_key("diffusion-mixup", images=data.images, labels=data.labels, teacher=teacher_record.key,
                          recipe=asdict(recipe), count=count, confidence=self.confidence, seed=setup.seed,
                          public=data.public_images if data.public_images is not None else "none")

        def build(folder: Path) -> Prepared:
            return synthesize(data, teacher, recipe, count, self.confidence, setup, folder)

        prepared, record = setup.cache.get_or_build("diffusion-mixup", key, build)
        self.data = SubsetWithSynthetic(self.private_fraction, prepared.arrays["images"],
                                        prepared.arrays["targets"], self.alpha)
        return [teacher_record, record]

    @property
    def synthetic_images(self) -> np.ndarray:
        """The kept samples (after `prepare`)."""
        if self.data is None:
            raise RuntimeError("diffusion-mixup has synthetic images only after prepare")
        return self.data.images

    def fill(self, recipe: Recipe, data: ClientData, context: RoundContext) -> None:
        if self.data is None:
            raise RuntimeError("diffusion-mixup trains only after prepare")
        recipe.claim("data", self.name)
        recipe.data = self.data


def synthesize(data: ClientData, teacher: Any, recipe: DiffusionRecipe, count: int, confidence: float,
               setup: PrepareContext, folder: Path) -> Prepared:
    """Steps 1, 3 and 4 of the module docstring; the kept samples and the report's numbers.
    (diffusers takes seconds to import, so only a client that synthesizes pays for it.)"""
    from fedmia.synthesis import closest_pairs_grid, memorization_check, sample, train_diffusion

    device = setup.plan.device
    trained = train_diffusion(data.images, data.labels if recipe.conditional else None, data.num_classes,
                              recipe, round_seed(setup.seed, DIFFUSION_KEY), device)
    batch = sample(trained, count, round_seed(setup.seed, SAMPLING_KEY), device)
    targets = soft_labels(teacher, batch.images, 1.0, device)
    kept = targets.max(1) >= confidence
    private, reference, against = memorization_sets(data)
    report = memorization_check(batch.images, private, reference,
                                lambda images: penultimate_features(teacher, images, device))
    closest_pairs_grid(report, batch.images, private, folder / GRID_FILE)
    details = {
        "diffusion": {"steps": trained.steps, "seconds": trained.seconds, "final_loss": trained.final_loss,
                      "conditional": recipe.conditional},
        "sampling": {"count": count, "seconds": batch.seconds, "per_second": batch.per_second,
                     "ddim_steps": recipe.sample_steps},
        "kept": int(kept.sum()), "kept_fraction": float(kept.mean()),
        "memorization": {**report.to_dict(pairs=8), "reference": against},
    }
    return Prepared({"images": batch.images[kept], "targets": targets[kept]}, details)


def memorization_sets(data: ClientData) -> tuple[np.ndarray, np.ndarray, str]:
    """(private set, reference non-members, what the reference is): see the module docstring."""
    if data.public_images is not None and len(data.public_images):
        return data.images, data.public_images, "public pool"
    half = len(data) // 2
    return data.images[:half], data.images[half:], "half of the client's records"
