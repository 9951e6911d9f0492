"""Distillation trains only on the teacher-labeled public pool and ends up agreeing with the
teacher there; preparation is cached by content and reloaded, never half-written."""

import numpy as np
import pytest
import torch

from fedmia.data import load_dataset
from fedmia.defenses import ClientData, DefenseSpec, PrepareContext, PreparationCache, RoundContext
from fedmia.defenses.cache import Prepared, content_key
from fedmia.errors import FedmiaError
from fedmia.models import build_model
from fedmia.training import TrainingPlan, predict_logits

SHAPE = (1, 8, 8)
PLAN = TrainingPlan(local_epochs=4, batch_size=16)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture
def client(digits):
    return ClientData(0, digits.images[:150], digits.labels[:150], 10, digits.images[1000:1300],
                      digits.labels[1000:1300])


def new_model():
    return build_model("cnn", SHAPE, 10, seed=0)


def setup(tmp_path, seed=5):
    return PrepareContext(PLAN, seed, PreparationCache(tmp_path), new_model)


def agreement(model, teacher_labels, images):
    return float((predict_logits(model, images).argmax(1) == teacher_labels).mean())


def test_distill_trains_on_the_public_pool_only_and_matches_the_teacher(tmp_path, client):
    defense = DefenseSpec("distill", {"temperature": 3.0, "teacher_epochs": 15}).build()
    (record,) = defense.prepare(client, setup(tmp_path))
    assert record.kind == "teacher" and not record.reused and record.details["train_accuracy"] > 0.9
    teacher_labels = defense.reference.targets.argmax(1)
    model = new_model()
    before = agreement(model, teacher_labels, client.public_images)
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()) if m.training else None)
    report = defense.train_round(model, client, RoundContext(1, 1, PLAN, seed=1))
    batches = torch.cat(seen).reshape(-1, 64)
    public = torch.as_tensor(client.public_images).reshape(-1, 64)
    private = torch.as_tensor(client.images).reshape(-1, 64)
    assert torch.cdist(batches, public).min(1).values.max() < 1e-6, "every row is a public image"
    assert torch.cdist(batches, private).min(1).values.min() > 1e-3, "no row is a private record"
    assert report.details["private_rows"] == 0 and report.details["training_rows"] == 300
    after = agreement(model, teacher_labels, client.public_images)
    assert after > max(0.8, before + 0.5)


def test_distill_needs_a_public_pool(tmp_path, digits):
    alone = ClientData(0, digits.images[:50], digits.labels[:50], 10)
    with pytest.raises(FedmiaError, match="needs a public pool; set public_size"):
        DefenseSpec("distill", {}).build().prepare(alone, setup(tmp_path))


def test_a_second_preparation_is_loaded_from_the_cache(tmp_path, client):
    first = DefenseSpec("distill", {"teacher_epochs": 5}).build()
    (built,) = first.prepare(client, setup(tmp_path))
    PreparationCache._memo.clear()
    second = DefenseSpec("distill", {"teacher_epochs": 5}).build()
    (loaded,) = second.prepare(client, setup(tmp_path))
    assert loaded.reused and loaded.key == built.key
    assert np.array_equal(first.reference.targets, second.reference.targets)
    other = ClientData(1, client.images[::-1].copy(), client.labels[::-1].copy(), 10,
                       client.public_images, client.public_labels)
    (moved,) = DefenseSpec("distill", {"teacher_epochs": 5}).build().prepare(other, setup(tmp_path))
    assert moved.key != built.key and not moved.reused, "other records, another entry"
    (reseeded,) = DefenseSpec("distill", {"teacher_epochs": 5}).build().prepare(client, setup(tmp_path, seed=6))
    assert reseeded.key != built.key


def test_a_damaged_entry_is_a_one_line_error_and_a_partial_one_is_ignored(tmp_path):
    cache = PreparationCache(tmp_path)
    key = content_key("thing", values=np.arange(3))
    calls = []

    def build(folder):
        calls.append(folder)
        return Prepared({"values": np.arange(3)}, {"n": 3})

    (tmp_path / "thing" / f"{key}.123.partial").mkdir(parents=True)
    prepared, record = cache.get_or_build("thing", key, build)
    assert not record.reused and len(calls) == 1 and prepared.details == {"n": 3}
    PreparationCache._memo.clear()
    (cache.entry("thing", key) / "arrays.safetensors").write_bytes(b"broken")
    with pytest.raises(FedmiaError, match="damaged.*delete that folder") as error:
        cache.get_or_build("thing", key, build)
    assert "\n" not in str(error.value)


def test_a_process_keeps_only_the_most_recent_entries_in_memory(tmp_path):
    from fedmia.defenses.cache import MEMO_ENTRIES

    PreparationCache._memo.clear()
    cache = PreparationCache(tmp_path)
    for index in range(MEMO_ENTRIES + 5):
        cache.get_or_build("thing", f"key{index}", lambda folder, i=index: Prepared({"i": np.array([i])}))
    assert len(PreparationCache._memo) == MEMO_ENTRIES
    assert cache.entry("thing", f"key{MEMO_ENTRIES + 4}") in PreparationCache._memo
    assert cache.entry("thing", "key0") not in PreparationCache._memo
    prepared, record = cache.get_or_build("thing", "key0", lambda folder: Prepared({"i": np.array([-1])}))
    assert record.reused and int(prepared.arrays["i"][0]) == 0, "evicted from memory, read back from disk"


def test_distill_on_the_clients_own_synthetic_images_needs_no_public_pool(tmp_path, digits):
    alone = ClientData(0, digits.images[:80], digits.labels[:80], 10)
    defense = DefenseSpec("distill", {"reference": "synthetic", "diffusion_steps": 30, "synthetic": 40,
                                      "teacher_epochs": 5, "confidence": 0.15}).build()
    assert not defense.needs_public_pool
    records = defense.prepare(alone, setup(tmp_path))
    assert [record.kind for record in records] == ["teacher", "diffusion-mixup"]
    synthetic = defense.reference.images
    assert len(synthetic) == records[1].details["kept"] and synthetic.shape[1:] == (1, 8, 8)
    report = defense.train_round(new_model(), alone, RoundContext(1, 1, PLAN, seed=1))
    assert report.details["private_rows"] == 0 and report.details["training_rows"] == len(synthetic)
    with pytest.raises(FedmiaError, match="reference='web'"):
        DefenseSpec("distill", {"reference": "web"}).build()
    strict = DefenseSpec("distill", {"reference": "synthetic", "diffusion_steps": 30, "synthetic": 40,
                                     "teacher_epochs": 5, "confidence": 1.0}).build()
    with pytest.raises(FedmiaError, match="no synthetic image passed"):
        strict.prepare(alone, setup(tmp_path))
