"""Top-k release: labels kept on any logits (ties included), the k largest posteriors exact and
the rest spread evenly, parameter and spec errors, and TargetView applying a release defense
before the querier's granularity."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.special import softmax
from torch import nn

from fedmia.attacks import OutputGranularity, TargetView
from fedmia.errors import FedmiaError
from fedmia.release import RELEASE_DEFENSES, ReleaseSpec, TopKRelease, make_release

#: Logit values drawn from a handful, so rows tie (at the top too) all the time.
FEW_VALUES = st.sampled_from([-2.0, 0.0, 0.1, 1.0, 7.0])
ANY_VALUE = st.floats(-50, 50, allow_nan=False, width=64)


@st.composite
def logits_and_k(draw):
    classes = draw(st.integers(1, 12))
    rows = draw(st.integers(1, 20))
    values = draw(st.sampled_from([FEW_VALUES, ANY_VALUE]))
    return draw(arrays(np.float64, (rows, classes), elements=values)), draw(st.integers(1, 14))


@settings(max_examples=200, deadline=None, derandomize=True)
@given(logits_and_k())
def test_labels_never_change(case):
    logits, k = case
    released = TopKRelease(k=k).transform(logits)
    assert np.array_equal(released.argmax(axis=1), logits.argmax(axis=1))
    if k >= logits.shape[1]:
        assert np.array_equal(released, logits)


def test_rows_whose_classes_all_tie_keep_their_label():
    """Rounding once gave a hidden class a step more than the top one on these rows."""
    tied = np.full((30, 11), 0.1) + np.arange(30)[:, None]
    assert (OutputGranularity(top_k=10).reveal(tied).argmax(axis=1) == 0).all()
    released = TopKRelease(k=10).transform(tied)
    assert (released.argmax(axis=1) == 0).all()
    assert softmax(released, axis=1) == pytest.approx(np.full((30, 11), 1 / 11), abs=1e-15)


@pytest.mark.parametrize("k", [1, 3, 9])
def test_k_probabilities_stay_exact_and_the_rest_is_spread_evenly(k):
    logits = np.random.default_rng(k).normal(0, 3, (200, 10))
    probs, released = softmax(logits, axis=1), softmax(TopKRelease(k=k).transform(logits), axis=1)
    order = np.argsort(-probs, axis=1)
    rows = np.arange(200)[:, None]
    top, hidden = order[:, :k], order[:, k:]
    assert released[rows, top] == pytest.approx(probs[rows, top], rel=1e-12)
    spread = (1 - probs[rows, top].sum(axis=1)) / (10 - k)
    assert released[rows, hidden] == pytest.approx(np.repeat(spread[:, None], 10 - k, axis=1), rel=1e-9)


def test_details_report_the_distortion():
    logits = np.log(np.array([[0.5, 0.3, 0.2], [0.6, 0.2, 0.2]]))
    defense = TopKRelease(k=1)
    defense.transform(logits)
    details = defense.details()
    # Row one becomes (0.5, 0.25, 0.25): L1 0.1; row two is already that shape.
    assert details["rows"] == 2 and details["changed_fraction"] == 0.5
    assert details["mean_l1"] == pytest.approx(0.05) and details["max_l1"] == pytest.approx(0.1)
    assert details["params"] == {"k": 1} and details["name"] == "top-k"


def test_default_k_is_three_and_specs_round_trip():
    assert make_release("top-k").params == {"k": 3}
    spec = ReleaseSpec.parse(" top-k : k=2 ")
    assert spec.label == "top-k:k=2" and spec.build().params == {"k": 2}
    assert ReleaseSpec.from_table({"name": "memguard", "hidden": 8, "epsilon": 0.5}).label == \
        "memguard:epsilon=0.5:hidden=8"
    assert set(RELEASE_DEFENSES) == {"top-k", "memguard"}


@pytest.mark.parametrize("text, words", [
    ("top-k:k=0", "outside"),
    ("top-k:k=2.5", "must be a int"),
    ("top-k:k=two", "must be a int"),
    ("top-k:depth=2", "no parameter 'depth'"),
    ("top-k:k", "not key=value"),
    ("top-k:k=", "not key=value"),
    ("noise:scale=1", "unknown release defense 'noise'"),
    (":k=1", "needs a name"),
])
def test_bad_specs_raise_one_line(text, words):
    with pytest.raises(FedmiaError, match=words) as error:
        make_release(text)
    assert "\n" not in str(error.value)


def test_target_view_applies_the_release_before_the_granularity():
    model = nn.Linear(4, 6)
    images = torch.randn(50, 4, generator=torch.Generator().manual_seed(0)).numpy()
    with torch.no_grad():
        raw = model(torch.as_tensor(images)).double().numpy()

    def boost_last_class(logits: np.ndarray) -> np.ndarray:
        return logits + np.array([0, 0, 0, 0, 0, 5.0])

    granularity = OutputGranularity(top_k=2)
    view = TargetView(model, granularity=granularity, release=boost_last_class)
    assert view.logits(images) == pytest.approx(granularity.reveal(boost_last_class(raw)), abs=1e-6)
    assert np.array_equal(view.predicted_labels(images), raw.argmax(axis=1)), "labels come from the raw model"
    assert (view.logits(images).argmax(axis=1) == 5).all() and (raw.argmax(axis=1) != 5).any()

    top_1 = TopKRelease(k=1)
    released = TargetView(model, release=top_1.transform).logits(images)
    assert released == pytest.approx(OutputGranularity(top_k=1).reveal(raw), abs=1e-6)
    assert top_1.details()["rows"] == 50
