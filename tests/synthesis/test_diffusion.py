"""The diffusion engine on scikit-learn's 8x8 digits: what it returns, that a seed fixes it, and
that training moves its samples from noise to digits (and guidance towards the asked class)."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from sklearn.linear_model import LogisticRegression

from fedmia.errors import FedmiaError
from fedmia.synthesis import DiffusionRecipe, TrainedDiffusion, denoising_loss, sample, train_diffusion
from fedmia.synthesis.diffusion import METADATA_KEY, padded_size
from fedmia.synthesis.memorization import nearest_neighbours

#: A smaller, faster-learning recipe than the default, so the module trains in seconds.
FAST = DiffusionRecipe(train_steps=500, base_channels=16, lr=3e-3, conditional=True)
#: Enough to exercise the code paths; the samples are noise.
TINY = DiffusionRecipe(train_steps=5, batch_size=8, base_channels=8)
TRAIN = 1000


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(digits):
    images, labels = digits
    return train_diffusion(images[:TRAIN], labels[:TRAIN], 10, FAST, seed=0)


@pytest.fixture(scope="module")
def untrained(digits):
    images, labels = digits
    return train_diffusion(images[:TRAIN], labels[:TRAIN], 10, replace(FAST, train_steps=0), seed=0)


@pytest.fixture(scope="module")
def tiny(digits):
    return train_diffusion(digits[0][:100], None, 10, TINY, seed=0)


@pytest.fixture(scope="module")
def classifier(digits):
    images, labels = digits
    return LogisticRegression(max_iter=2000).fit(images[:TRAIN].reshape(TRAIN, -1), labels[:TRAIN])


def flat(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1)


def test_samples_have_the_shape_and_range_and_follow_the_seed(tiny):
    batch = sample(tiny, 37, seed=3, batch_size=16)
    assert batch.images.shape == (37, 1, 8, 8) and batch.images.dtype == np.float32
    assert batch.images.min() >= 0 and batch.images.max() <= 1 and batch.labels is None
    assert batch.seconds > 0 and batch.per_second > 0
    np.testing.assert_array_equal(sample(tiny, 37, seed=3, batch_size=16).images, batch.images)
    np.testing.assert_allclose(sample(tiny, 37, seed=3, batch_size=37).images, batch.images, atol=1e-3)
    assert np.abs(sample(tiny, 37, seed=4, batch_size=16).images - batch.images).mean() > 0.05


def test_training_is_fixed_by_its_seed_and_leaves_the_global_stream_alone(digits, tiny):
    before = torch.get_rng_state()
    again = train_diffusion(digits[0][:100], None, 10, TINY, seed=0)
    assert torch.equal(torch.get_rng_state(), before)
    other = train_diffusion(digits[0][:100], None, 10, TINY, seed=1)
    for name, weight in tiny.unet.state_dict().items():
        assert torch.equal(again.unet.state_dict()[name], weight)
    weights = tiny.unet.state_dict().items()
    assert any(not torch.equal(other.unet.state_dict()[name], weight) for name, weight in weights)


def test_progress_reports_every_step(digits):
    seen = []
    train_diffusion(digits[0][:50], None, 10, TINY, seed=0, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(step, TINY.train_steps) for step in range(1, TINY.train_steps + 1)]


def test_conditional_sampling_returns_the_asked_labels(trained):
    asked = np.array([7, 7, 0, 3, 9], dtype=np.int64)
    np.testing.assert_array_equal(sample(trained, 5, seed=0, labels=asked).labels, asked)
    balanced = sample(trained, 30, seed=0).labels
    assert np.bincount(balanced, minlength=10).tolist() == [3] * 10


def test_training_lowers_the_denoising_loss(digits, trained, untrained):
    images, labels = digits
    held_out = images[TRAIN:TRAIN + 400], labels[TRAIN:TRAIN + 400]
    assert np.isfinite(trained.final_loss) and trained.steps == FAST.train_steps
    before = denoising_loss(untrained, held_out[0], seed=5, labels=held_out[1])
    after = denoising_loss(trained, held_out[0], seed=5, labels=held_out[1])
    assert after < 0.3 * before, (before, after)


def test_trained_samples_look_like_digits_and_untrained_ones_do_not(digits, trained, untrained):
    """Distance of each sample to its nearest real training digit, and the mean image: a real
    held-out digit sits about 1.2 from its nearest training digit and noise about 3.5."""
    images = digits[0]
    real = nearest_neighbours(flat(images[TRAIN:TRAIN + 200]), flat(images[:TRAIN]))[0].mean()
    good = sample(trained, 200, seed=1).images
    noise = sample(untrained, 200, seed=1).images
    good_distance = nearest_neighbours(flat(good), flat(images[:TRAIN]))[0].mean()
    noise_distance = nearest_neighbours(flat(noise), flat(images[:TRAIN]))[0].mean()
    assert good_distance < 0.6 * noise_distance and good_distance < 1.6 * real, (good_distance, noise_distance, real)
    mean_image = images[:TRAIN].mean(axis=0)
    assert np.abs(good.mean(axis=0) - mean_image).mean() < 0.45 * np.abs(noise.mean(axis=0) - mean_image).mean()


def test_guidance_steers_samples_to_their_label(trained, classifier):
    agreement = {}
    for guidance in (0.0, 1.8):
        batch = sample(trained, 200, seed=2, guidance=guidance)
        agreement[guidance] = float(np.mean(classifier.predict(flat(batch.images)) == batch.labels))
    assert agreement[1.8] > 0.6 and agreement[1.8] > agreement[0.0] + 0.05, agreement


def test_a_saved_model_loads_and_samples_the_same(tmp_path, trained):
    path = tmp_path / "model.safetensors"
    trained.save(path)
    loaded = TrainedDiffusion.load(path)
    assert (loaded.recipe, loaded.image_shape, loaded.num_classes, loaded.steps, loaded.final_loss) == (
        trained.recipe, trained.image_shape, trained.num_classes, trained.steps, trained.final_loss)
    original, again = sample(trained, 20, seed=9), sample(loaded, 20, seed=9)
    np.testing.assert_array_equal(again.images, original.images)
    np.testing.assert_array_equal(again.labels, original.labels)


def test_an_unreadable_or_foreign_file_is_a_user_error(tmp_path, tiny):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a model")
    with pytest.raises(FedmiaError, match="cannot read"):
        TrainedDiffusion.load(garbage)
    future = tmp_path / "future.safetensors"
    tiny.save(future)
    with safe_open(str(future), framework="pt") as handle:
        metadata = json.loads(handle.metadata()[METADATA_KEY])
    save_file(load_file(str(future)), str(future), metadata={METADATA_KEY: json.dumps({**metadata, "format": 99})})
    with pytest.raises(FedmiaError, match="format"):
        TrainedDiffusion.load(future)


@pytest.mark.parametrize("shape, overrides, levels, padded", [
    ((1, 28, 28), {}, 3, 28), ((1, 10, 10), {"levels": 3}, 3, 12), ((3, 8, 8), {}, 2, 8), ((1, 7, 7), {}, 2, 8)])
def test_other_shapes_are_padded_for_the_unet_and_cropped_back(shape, overrides, levels, padded):
    recipe = DiffusionRecipe.for_shape(shape, train_steps=2, batch_size=4, base_channels=8, sample_steps=3,
                                       **overrides)
    assert recipe.levels == levels and padded_size(shape[1], levels) == padded
    images = np.random.default_rng(0).random((6, *shape), dtype=np.float32)
    model = train_diffusion(images, None, 2, recipe, seed=0)
    assert tuple(model.unet.config.sample_size) == (padded, padded)
    assert sample(model, 2, seed=0).images.shape == (2, *shape)


@pytest.mark.parametrize("field, value", [
    ("train_steps", -1), ("batch_size", 0), ("lr", 0.0), ("lr", float("nan")), ("beta_start", 0.03),
    ("dropout", 1.0), ("ema_decay", 1.0), ("guidance", -0.5), ("uncond_prob", 1.0), ("sample_steps", 2000),
    ("base_channels", 12), ("levels", 0)])
def test_bad_recipes_are_user_errors(field, value):
    with pytest.raises(FedmiaError, match=field.split("_")[0]):
        DiffusionRecipe(**{field: value})


def test_bad_inputs_are_user_errors(digits, tiny, trained):
    images, labels = digits
    with pytest.raises(FedmiaError, match="no_such"):
        DiffusionRecipe.for_shape((1, 8, 8), no_such=1)
    with pytest.raises(FedmiaError, match=r"\[0, 1\]"):
        train_diffusion(images[:10] * 16, None, 10, TINY, seed=0)
    with pytest.raises(FedmiaError, match=r"\(n, C, H, W\)"):
        train_diffusion(images[:10, 0], None, 10, TINY, seed=0)
    with pytest.raises(FedmiaError, match="needs labels"):
        train_diffusion(images[:10], None, 10, FAST, seed=0)
    with pytest.raises(FedmiaError, match="0..9"):
        train_diffusion(images[:10], labels[:10] + 10, 10, FAST, seed=0)
    with pytest.raises(FedmiaError, match="unconditional"):
        sample(tiny, 3, seed=0, labels=np.zeros(3, dtype=np.int64))
    with pytest.raises(FedmiaError, match="3 integers"):
        sample(trained, 3, seed=0, labels=np.zeros(4, dtype=np.int64))
    with pytest.raises(FedmiaError, match="count"):
        sample(tiny, 0, seed=0)
    with pytest.raises(FedmiaError, match="trained on"):
        denoising_loss(tiny, np.zeros((2, 1, 9, 9), dtype=np.float32), seed=0)
    with pytest.raises(FedmiaError, match="device"):
        sample(tiny, 1, seed=0, device="nowhere")
