"""`distill`: distillation for membership privacy (DMP, Shejwalkar & Houmansadr 2021). A teacher
trained on the client's records labels a reference set the client did not train on, with its
softmax at temperature T; the upload is the global model trained on that reference set only, so
the shared model sees the private records only through the teacher's soft labels on other data.
The reference set is the run's public pool (`reference = "public"`, needs `public_size`), or the
client's own synthetic images (`reference = "synthetic"`: `diffusion-mixup`'s diffusion model
and confidence filter, with `diffusion_steps`, `synthetic` and `confidence` as there), for a
client with no public data. Seed 002 uses T = 3.0.

The teacher (and a diffusion model) read the records without any DP, so composed with `dpsgd`
the epsilon covers only the student's steps on the reference set. DMP also selects low-entropy reference samples; here
every public sample is used (with a small public pool, selection would leave too few).
"""

from __future__ import annotations

import numpy as np

from fedmia.defenses.base import ClientData, PrepareContext, RoundContext, check_param
from fedmia.defenses.cache import PreparationRecord
from fedmia.defenses.diffusion_mixup import SYNTHESIS_READS_RECORDS, DiffusionMixup
from fedmia.defenses.recipe import DataSource, Recipe, RecipeDefense, TrainingSet
from fedmia.defenses.teacher import soft_labels, train_teacher
from fedmia.errors import FedmiaError

TEACHER_READS_RECORDS = "the teacher trained on the client's records without DP"


class TeacherLabeledData(DataSource):
    """A fixed set of non-private images with the teacher's soft labels."""

    def __init__(self, images: np.ndarray, targets: np.ndarray, outside_privatizer: str) -> None:
        self.images, self.targets = images, targets
        self.outside_privatizer = outside_privatizer

    def training_set(self, data: ClientData, context: RoundContext) -> TrainingSet:
        return TrainingSet(self.images, self.targets.argmax(1), self.targets, np.zeros(len(self.images), dtype=bool))


REFERENCES = ("public", "synthetic")


class Distill(RecipeDefense):
    name = "distill"
    prepares = True

    def __init__(self, temperature: float = 3.0, teacher_epochs: int = 20, reference: str = "public",
                 diffusion_steps: int = 0, synthetic: int = 0, confidence: float = 0.7) -> None:
        self.temperature = check_param("temperature", temperature, 0.05, 100.0, defense=self.name)
        epochs = check_param("teacher_epochs", teacher_epochs, 1, 10_000, defense=self.name)
        if not epochs.is_integer():
            raise FedmiaError(f"defense 'distill': teacher_epochs={teacher_epochs} must be a whole number")
        if reference not in REFERENCES:
            raise FedmiaError(f"defense 'distill': reference={reference!r}; use one of {', '.join(REFERENCES)}")
        self.teacher_epochs = int(epochs)
        self.synthetic_source = None if reference == "public" else DiffusionMixup(
            synthetic=synthetic, confidence=confidence, teacher_epochs=teacher_epochs,
            diffusion_steps=diffusion_steps)
        self.needs_public_pool = reference == "public"
        self.reference: TeacherLabeledData | None = None

    def prepare(self, data: ClientData, setup: PrepareContext) -> list[PreparationRecord]:
        if self.synthetic_source is None:
            images, _ = data.public(self.name)
            extra: list[PreparationRecord] = []
        else:
            extra = self.synthetic_source.prepare(data, setup)[1:]
            images = self.synthetic_source.synthetic_images
            if not len(images):
                raise FedmiaError("defense 'distill': no synthetic image passed the teacher's confidence "
                                  "filter; raise diffusion_steps or lower confidence")
        teacher, record = train_teacher(data, setup, self.teacher_epochs)
        self.reference = TeacherLabeledData(images, soft_labels(teacher, images, self.temperature, setup.plan.device),
                                            TEACHER_READS_RECORDS if self.synthetic_source is None
                                            else SYNTHESIS_READS_RECORDS)
        return [record, *extra]

    def fill(self, recipe: Recipe, data: ClientData, context: RoundContext) -> None:
        if self.reference is None:
            raise RuntimeError("distill trains only after prepare")
        recipe.claim("data", self.name)
        recipe.data = self.reference
