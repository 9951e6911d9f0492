"""White-box attacks: per-sample gradients against plain autograd, planted membership on an
overfit model, an untrained model at chance, access gating and seeding."""

import numpy as np
import pytest
import torch
from torch import nn

from fedmia.attacks.base import (
    OUTPUTS,
    WHITE_BOX,
    AdversaryKnowledge,
    ReferenceModel,
    ReferenceRequest,
    Samples,
    TargetView,
)
from fedmia.attacks.whitebox import (
    GradientNormAttack,
    NasrAttack,
    calibration_sets,
    gradient_norms,
    last_layer_gradients,
    negative_log_norm,
)
from fedmia.data import load_dataset
from fedmia.errors import FedmiaError
from fedmia.metrics import membership_metrics
from fedmia.models import build_model
from fedmia.training import TrainingPlan, train_epochs

DATA = load_dataset("digits")
PLAN = TrainingPlan(batch_size=16, lr=0.05)
SIZE = 60


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread, as the attack phase runs each scope: tiny models gain nothing from a
    second thread and contend for the shared cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def samples(indices: np.ndarray) -> Samples:
    return Samples(DATA.images[indices], DATA.labels[indices], indices)


def overfit(indices: np.ndarray, seed: int, *, dp_compatible: bool = False, epochs: int = 40) -> nn.Module:
    model = build_model("cnn", DATA.input_shape, DATA.num_classes, dp_compatible=dp_compatible, seed=seed)
    train_epochs(model, DATA.images[indices], DATA.labels[indices], PLAN, seed, epochs=epochs)
    return model


def autograd_gradients(model: nn.Module, index: int, parameters: list[nn.Parameter]) -> list[torch.Tensor]:
    """The gradient of one sample's loss by a plain backward pass, in eval mode."""
    model.eval()
    image = torch.as_tensor(DATA.images[index : index + 1])
    loss = nn.functional.cross_entropy(model(image), torch.as_tensor(DATA.labels[index : index + 1]))
    return list(torch.autograd.grad(loss, parameters))


@pytest.fixture(scope="module", params=[False, True], ids=["batchnorm", "groupnorm"])
def small_model(request) -> nn.Module:
    """Briefly trained, so BatchNorm's running statistics are not the identity."""
    return overfit(np.arange(32), seed=5, dp_compatible=request.param, epochs=2)


@pytest.mark.parametrize("layers", ["all", "last"])
def test_per_sample_gradient_norm_equals_a_backward_pass_per_sample(small_model, layers):
    rows = np.array([3, 40, 41, 700, 1500])
    chosen = (list(small_model.parameters()) if layers == "all"
              else list(small_model.classifier[-1].parameters()))
    small_model.train()
    norms = gradient_norms(small_model, samples(rows), layers, "cpu")
    expected = [torch.sqrt(sum(g.double().square().sum() for g in autograd_gradients(small_model, i, chosen)))
                for i in rows]
    assert norms == pytest.approx(
        np.array([float(e) for e in expected]), rel=1e-5)


def test_last_layer_gradient_rows_equal_autograd(small_model):
    rows = np.array([7, 300, 1200])
    layer = small_model.train().classifier[-1]
    features = last_layer_gradients(small_model, samples(rows), "cpu")
    assert features.shape == (3, DATA.num_classes, layer.in_features + 1)
    for feature, index in zip(features, rows):
        weight, bias = autograd_gradients(small_model, index, [layer.weight, layer.bias])
        np.testing.assert_allclose(feature[:, :-1], weight.numpy(), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(feature[:, -1], bias.numpy(), rtol=1e-5, atol=1e-7)


def test_a_zero_gradient_still_scores_finite_and_highest():
    scores = negative_log_norm(np.array([0.0, 1e-30, 1.0]))
    assert np.all(np.isfinite(scores)) and scores[0] > scores[1] > scores[2]


class World:
    """An overfit target on SIZE members, two offline references trained the same way on
    population subsets, and an untrained model of the same architecture."""

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        order = rng.permutation(len(DATA))
        self.members, self.nonmembers = order[:SIZE], order[SIZE : 5 * SIZE]
        population, self.rest = np.sort(order[5 * SIZE : 15 * SIZE]), order[15 * SIZE :]
        self.target = overfit(self.members, seed=1)
        self.untrained = build_model("cnn", DATA.input_shape, DATA.num_classes, seed=9)
        subsets = [np.sort(rng.choice(population, SIZE, replace=False)) for _ in range(2)]
        references = tuple(ReferenceModel(overfit(s, seed=2 + i), s) for i, s in enumerate(subsets))
        self.knowledge = AdversaryKnowledge(num_classes=DATA.num_classes, references=references,
                                            population=samples(population), seed=0)

    def auc(self, attack, model: nn.Module, members: np.ndarray, nonmembers: np.ndarray) -> float:
        scores = attack.score(TargetView(model), samples(np.concatenate([members, nonmembers])))
        assert scores.dtype == np.float64 and np.all(np.isfinite(scores))
        labels = np.r_[np.ones(len(members)), np.zeros(len(nonmembers))]
        return membership_metrics(scores, labels, 1e-5).auc


@pytest.fixture(scope="module")
def world() -> World:
    return World()


ATTACKS = [(GradientNormAttack, {}), (GradientNormAttack, {"layers": "last"}), (NasrAttack, {})]


@pytest.mark.parametrize("cls, params", ATTACKS)
def test_planted_members_are_found_and_an_untrained_model_gives_chance(world, cls, params):
    attack = cls(**params).fit(world.knowledge)
    assert attack.threshold is not None and np.isfinite(attack.threshold)
    # Chance gives 0.5 +- 0.04 on these 60 members and 240 non-members; the loss attack ~0.8.
    assert world.auc(attack, world.target, world.members, world.nonmembers) > 0.7
    half = len(world.rest) // 2
    assert abs(world.auc(attack, world.untrained, world.rest[:half], world.rest[half:]) - 0.5) < 0.06


@pytest.mark.parametrize("cls", [GradientNormAttack, NasrAttack])
def test_without_white_box_access_there_is_no_score(world, cls):
    attack = cls().fit(world.knowledge)
    assert cls.requires == frozenset({WHITE_BOX})
    with pytest.raises(PermissionError):
        attack.score(TargetView(world.target, frozenset({OUTPUTS})), samples(world.members))


def test_the_same_seed_gives_the_same_nasr_scores(world):
    candidates = samples(np.concatenate([world.members, world.nonmembers]))

    def scores(seed: int) -> np.ndarray:
        knowledge = AdversaryKnowledge(num_classes=DATA.num_classes, references=world.knowledge.references,
                                       population=world.knowledge.population, seed=seed)
        return NasrAttack(epochs=5).fit(knowledge).score(TargetView(world.target), candidates)

    first = scores(0)
    np.testing.assert_array_equal(first, scores(0))
    assert not np.array_equal(first, scores(1))


def test_calibration_draws_each_reference_balanced_with_its_true_membership(world):
    calibrations = calibration_sets(world.knowledge, 2, "nasr")
    for reference, calibration in zip(world.knowledge.references, calibrations):
        indices, membership = calibration.samples.indices, calibration.membership
        assert membership.sum() == (~membership).sum() == SIZE
        np.testing.assert_array_equal(membership, reference.trained_on(indices))
        np.testing.assert_array_equal(calibration.samples.labels, DATA.labels[indices])


def test_references_requested():
    assert GradientNormAttack().references_needed() == ReferenceRequest(1, online=False)
    assert NasrAttack(refs=3).references_needed() == ReferenceRequest(3, online=False)


@pytest.mark.parametrize("cls, params", [(GradientNormAttack, {"layers": "first"}), (NasrAttack, {"refs": 0}),
                                         (NasrAttack, {"hidden": 0})])
def test_bad_parameters_are_user_errors(cls, params):
    with pytest.raises(FedmiaError):
        cls(**params)


def test_references_that_trained_on_the_whole_population_are_a_user_error(world):
    reference = world.knowledge.references[0]
    everything = ReferenceModel(reference.model, world.knowledge.population.indices)
    for knowledge in (AdversaryKnowledge(num_classes=10, references=(everything,),
                                         population=world.knowledge.population),
                      AdversaryKnowledge(num_classes=10, references=(reference,))):
        with pytest.raises(FedmiaError):
            GradientNormAttack().fit(knowledge)
