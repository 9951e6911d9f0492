"""Model registry: shapes for each input size, DP-compatible forms, seeded initial weights."""

import pytest
import torch
from opacus.validators import ModuleValidator
from torch import nn

from fedmia.errors import FedmiaError
from fedmia.models import MODELS, build_model

SHAPES = [(1, 8, 8), (1, 28, 28), (3, 32, 32)]


@pytest.mark.parametrize("name", ["cnn", "resnet18", "vgg11"])
@pytest.mark.parametrize("shape", SHAPES)
def test_every_model_fits_every_input_size_in_both_forms(name, shape):
    for dp_compatible in (False, True):
        model = build_model(name, shape, 7, dp_compatible=dp_compatible).eval()
        assert model(torch.zeros(2, *shape)).shape == (2, 7)


@pytest.mark.parametrize("name", list(MODELS))
def test_dp_form_has_no_batchnorm_and_passes_opacus_validation(name):
    model = build_model(name, (3, 32, 32), 10, dp_compatible=True)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert any(isinstance(m, nn.GroupNorm) for m in model.modules())
    assert ModuleValidator.validate(model, strict=False) == []


def test_same_seed_same_weights_other_seed_other_weights():
    def weights(seed):
        return build_model("cnn", (1, 8, 8), 10, seed=seed).state_dict()

    first, again, other = weights(3), weights(3), weights(4)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_building_a_model_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    build_model("cnn", (1, 8, 8), 10, seed=9)
    assert torch.equal(torch.rand(1), expected)


def test_unknown_model_is_a_user_error():
    with pytest.raises(FedmiaError, match="unknown model"):
        build_model("transformer", (1, 8, 8), 10)
