"""Seed 000's defense: the synthetic set it prepares (teacher-filtered samples of a real DDPM,
a memorization check and its grid, cached), and what each round actually trains on."""

import numpy as np
import pytest
import torch

from fedmia.data import load_dataset
from fedmia.defenses import ClientData, DefenseSpec, PrepareContext, PreparationCache, RoundContext
from fedmia.defenses.diffusion_mixup import GRID_FILE
from fedmia.defenses.recipe import fill_recipe
from fedmia.models import build_model
from fedmia.training import TrainingPlan

PLAN = TrainingPlan(local_epochs=1, batch_size=16)
PARAMS = {"diffusion_steps": 40, "teacher_epochs": 8, "confidence": 0.3, "synthetic": 60}


@pytest.fixture(scope="module")
def client():
    digits = load_dataset("digits")
    return ClientData(0, digits.images[:80], digits.labels[:80], 10, digits.images[900:1000], digits.labels[900:1000])


def new_model():
    return build_model("cnn", (1, 8, 8), 10, dp_compatible=True, seed=0)


@pytest.fixture(scope="module")
def prepared(client, tmp_path_factory):
    cache = PreparationCache(tmp_path_factory.mktemp("cache"))
    defense = DefenseSpec("diffusion-mixup", PARAMS).build()
    records = defense.prepare(client, PrepareContext(PLAN, 4, cache, new_model))
    return defense, records, cache


def test_preparation_keeps_confident_samples_and_checks_memorization(prepared):
    defense, (teacher, synthesis), cache = prepared
    assert teacher.kind == "teacher" and synthesis.kind == "diffusion-mixup"
    details = synthesis.details
    assert details["diffusion"]["steps"] == 40 and details["sampling"]["count"] == 60
    images, targets = defense.data.images, defense.data.targets
    assert len(images) == details["kept"] > 0 and images.shape[1:] == (1, 8, 8)
    assert images.min() >= 0 and images.max() <= 1
    assert np.allclose(targets.sum(1), 1, atol=1e-5) and (targets.max(1) >= 0.3).all()
    memorization = details["memorization"]
    assert memorization["reference"] == "public pool"
    assert 0 <= memorization["pixels"]["fraction_closer"] <= 1 and memorization["features"] is not None
    assert (cache.entry(synthesis.kind, synthesis.key) / GRID_FILE).is_file()


def test_a_second_client_process_loads_the_same_samples(prepared, client):
    defense, (_, synthesis), cache = prepared
    PreparationCache._memo.clear()
    again = DefenseSpec("diffusion-mixup", PARAMS).build()
    (_, record) = again.prepare(client, PrepareContext(PLAN, 4, cache, new_model))
    assert record.reused and record.key == synthesis.key
    assert np.array_equal(again.data.images, defense.data.images)


def test_each_round_trains_on_a_fresh_private_subset_plus_every_kept_sample(prepared, client):
    defense, _, _ = prepared
    subsets = []
    for server_round, seed in ((1, 10), (2, 11)):
        recipe = fill_recipe((defense,), client, RoundContext(server_round, 2, PLAN, seed))
        training = recipe.data.training_set(client, RoundContext(server_round, 2, PLAN, seed))
        assert training.private.sum() == 40 and (~training.private).sum() == len(defense.data.images)
        assert np.array_equal(training.images[~training.private], defense.data.images)
        subsets.append({tuple(image.ravel()) for image in training.images[training.private]})
    assert subsets[0] != subsets[1], "a new random half of the records every round"
    model = new_model()
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()) if m.training else None)
    defense.train_round(model, client, RoundContext(1, 2, PLAN, 10))
    rows = torch.cat(seen).reshape(-1, 64)
    pool = torch.cat([torch.as_tensor(client.images).reshape(-1, 64), torch.as_tensor(defense.data.images).reshape(-1, 64)])
    assert (torch.cdist(rows, pool).min(1).values > 1e-4).float().mean() > 0.8, "batches are mixed"


def test_with_dpsgd_the_report_says_the_epsilon_does_not_cover_the_synthesis(prepared, client, tmp_path):
    _, _, cache = prepared
    composed = DefenseSpec("diffusion-mixup+dpsgd", {**PARAMS, "epsilon": 4.0}).build()
    composed.prepare(client, PrepareContext(PLAN, 4, cache, new_model))
    report = composed.train_round(new_model(), client, RoundContext(1, 1, PLAN, 3))
    reasons = report.details["epsilon_not_covering"]
    assert any("diffusion model" in reason for reason in reasons) and any("mixup" in reason for reason in reasons)
