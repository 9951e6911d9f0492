"""The GAN prior and latent inversion on scikit-learn's 8x8 digits: shapes for every input
size, that a seed fixes everything, that training moves samples towards the data, that the cache
form gives the same GAN back, and that inversion lowers its objective until the classifier
assigns the target class."""

import numpy as np
import pytest
import torch

from fedmia.defenses.cache import PreparationCache, Prepared
from fedmia.errors import FedmiaError
from fedmia.inversion.gan import TrainedGan, initial_latents, inversion_objective, invert_latents, train_gan
from fedmia.models import build_model
from fedmia.training import TrainingPlan, train_epochs

STEPS = 600
TARGET = 7

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def gan(digits):
    return train_gan(digits[0][:1000], seed=0, steps=STEPS)


@pytest.fixture(scope="module")
def classifier(digits):
    images, labels = digits
    model = build_model("cnn", (1, 8, 8), 10, seed=0)
    train_epochs(model, images[:1000], labels[:1000], TrainingPlan(local_epochs=10, batch_size=32), seed=0)
    model.zero_grad(set_to_none=True)
    return model.eval()


def nearest_distance(samples: np.ndarray, data: np.ndarray) -> float:
    """Mean Euclidean distance from each sample to its nearest data image."""
    flat_s, flat_d = samples.reshape(len(samples), -1), data.reshape(len(data), -1)
    squared = (flat_s**2).sum(1)[:, None] + (flat_d**2).sum(1)[None] - 2 * flat_s @ flat_d.T
    return float(np.sqrt(np.maximum(squared, 0)).min(1).mean())


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (2, 10, 6)])
def test_generator_and_discriminator_fit_every_input_shape(shape):
    images = np.random.default_rng(0).random((8, *shape), dtype=np.float32)
    trained = train_gan(images, seed=0, steps=2, batch_size=4)
    samples = trained.sample(5, seed=0)
    assert samples.shape == (5, *shape) and samples.dtype == np.float32
    assert samples.min() >= 0 and samples.max() <= 1
    assert trained.discriminator(torch.as_tensor(samples)).shape == (5,)


def test_a_seed_fixes_the_gan_and_its_samples(digits):
    first, again = (train_gan(digits[0][:200], seed=3, steps=10) for _ in range(2))
    other = train_gan(digits[0][:200], seed=4, steps=10)
    np.testing.assert_array_equal(first.sample(6, seed=1), again.sample(6, seed=1))
    assert not np.allclose(first.sample(6, seed=1), other.sample(6, seed=1))
    assert not np.allclose(first.sample(6, seed=1), first.sample(6, seed=2))


def test_training_moves_samples_towards_the_data(digits, gan):
    untrained = train_gan(digits[0][:1000], seed=0, steps=0)
    held_out = digits[0][1000:]
    trained_distance = nearest_distance(gan.sample(200, seed=0), held_out)
    untrained_distance = nearest_distance(untrained.sample(200, seed=0), held_out)
    assert gan.steps == STEPS and np.isfinite(gan.generator_loss) and np.isfinite(gan.discriminator_loss)
    assert trained_distance < 0.7 * untrained_distance


def test_the_cache_form_gives_the_same_gan_back(gan, tmp_path):
    cache = PreparationCache(tmp_path)
    stored, record = cache.get_or_build("gan", "key", lambda folder: Prepared(gan.arrays(), gan.details()))
    _, again = cache.get_or_build("gan", "key", lambda folder: pytest.fail("built twice"))
    loaded = TrainedGan.from_arrays(stored.arrays, stored.details)
    assert not record.reused and again.reused
    assert loaded.details() == gan.details()
    np.testing.assert_array_equal(loaded.sample(8, seed=5), gan.sample(8, seed=5))
    probe = torch.as_tensor(gan.sample(8, seed=6))
    torch.testing.assert_close(loaded.discriminator(probe), gan.discriminator(probe))


def test_inversion_lowers_the_objective_until_the_classifier_assigns_the_target(gan, classifier):
    start = gan.sample(16, seed=0)
    np.testing.assert_array_equal(start, gan.generator(initial_latents(gan, 16, seed=0)).detach().numpy())
    inverted = invert_latents(gan, classifier, TARGET, 16, iterations=200, lr=0.1, prior_weight=0.1, seed=0)
    before = inversion_objective(gan, classifier, start, TARGET, prior_weight=0.1)
    after = inversion_objective(gan, classifier, inverted, TARGET, prior_weight=0.1)
    predicted = classifier(torch.as_tensor(inverted)).argmax(1).numpy()
    assert (after < before).mean() >= 0.9 and after.mean() < 0.5 * before.mean()
    assert (predicted == TARGET).mean() >= 0.75
    assert (classifier(torch.as_tensor(start)).argmax(1).numpy() == TARGET).mean() <= 0.3


def test_the_prior_weight_trades_realism_for_the_class(gan, classifier):
    realism = {}
    for weight in (0.0, 3.0):
        inverted = invert_latents(gan, classifier, TARGET, 16, iterations=100, lr=0.05, prior_weight=weight, seed=0)
        realism[weight] = float(gan.discriminator(torch.as_tensor(inverted)).detach().mean())
    assert realism[3.0] > realism[0.0]


def test_inversion_is_seeded_and_leaves_no_gradients(gan, classifier):
    run = lambda seed: invert_latents(gan, classifier, 2, 4, iterations=10, lr=0.05, prior_weight=0.1, seed=seed)
    np.testing.assert_array_equal(run(0), run(0))
    assert not np.allclose(run(0), run(1))
    modules = (classifier, gan.generator, gan.discriminator)
    assert all(p.grad is None for module in modules for p in module.parameters())


def test_bad_inputs_are_one_line_errors(gan, classifier):
    with pytest.raises(FedmiaError, match="target class 10"):
        invert_latents(gan, classifier, 10, 4, iterations=1, lr=0.05, prior_weight=0.1, seed=0)
    with pytest.raises(FedmiaError, match="count >= 1"):
        invert_latents(gan, classifier, 1, 0, iterations=1, lr=0.05, prior_weight=0.1, seed=0)
    with pytest.raises(FedmiaError, match="n >= 2"):
        train_gan(np.zeros((1, 1, 8, 8), np.float32), seed=0)
    with pytest.raises(FedmiaError, match="steps >= 0"):
        train_gan(np.zeros((4, 1, 8, 8), np.float32), seed=0, steps=-1)
