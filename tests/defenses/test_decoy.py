"""decoy on scikit-learn's 8x8 digits: the round fine-tunes the trained model so that the images
inverted for the protected class stop being that class and the decoys become it, the EWC term
holds the weights, a GMI attacker (its own GAN, trained on public digits without the protected
class) recovers the protected class less often, preparation is cached, composed with dpsgd the
round says the epsilon does not cover the Fisher term, and bad parameters are one-line errors."""

import copy

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from fedmia.data import load_dataset
from fedmia.defenses import ClientData, Composition, DPSGD, PrepareContext, PreparationCache, RoundContext
from fedmia.defenses import decoy as decoy_module
from fedmia.defenses.decoy import FISHER_READS_RECORDS, Decoy, DecoyFinisher, fisher_diagonal
from fedmia.defenses.none import NoDefense
from fedmia.errors import FedmiaError
from fedmia.inversion.gan import invert_latents, train_gan
from fedmia.models import build_model
from fedmia.training import TrainingPlan, accuracy, predict_logits, train_epochs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPE = (1, 8, 8)
PLAN = TrainingPlan(local_epochs=2, batch_size=16)
PROTECTED, DECOY = 0, 1
#: A GAN good enough for class-specific inversions on digits within seconds.
GAN = {"gan_steps": 1000, "gan_lr": 5e-4}
CONTEXT = RoundContext(1, 1, PLAN, seed=3)


def new_model():
    return build_model("cnn", SHAPE, 10, seed=0)


@pytest.fixture(scope="module")
def digits():
    """100 members, a public pool of 300, and the remaining ~1400 records held out."""
    data = load_dataset("digits")
    order = np.random.default_rng(0).permutation(len(data.labels))
    members, public, held_out = order[:100], order[100:400], order[400:]
    client = ClientData(0, data.images[members], data.labels[members], 10, data.images[public],
                        data.labels[public])
    return client, (data.images[held_out], data.labels[held_out])


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return PreparationCache(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def trained(digits):
    """The model a client holds after some rounds: its records fitted."""
    client, _ = digits
    model = new_model()
    train_epochs(model, client.images, client.labels, PLAN, seed=0, epochs=20)
    return model


def defended_round(defense, trained, client, cache):
    """One round of `defense` on a copy of `trained`: the finisher, the model as the finisher
    received it (theta*), the upload and the report."""
    defense.prepare(client, PrepareContext(PLAN, 5, cache, new_model))
    seen = {}
    finish = DecoyFinisher.finish

    def spy(self, model, data, context):
        seen["finisher"], seen["theta_star"] = self, copy.deepcopy(model)
        return finish(self, model, data, context)

    model = copy.deepcopy(trained)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DecoyFinisher, "finish", spy)
        report = defense.train_round(model, client, CONTEXT)
    return seen["finisher"], seen["theta_star"], model, report


@pytest.fixture(scope="module")
def rounds(digits, trained, cache):
    client, _ = digits
    plain = copy.deepcopy(trained)
    NoDefense().train_round(plain, client, CONTEXT)
    return {"plain": plain,
            "decoy": defended_round(Decoy(**GAN), trained, client, cache),
            "no-ewc": defended_round(Decoy(omega=0.0, **GAN), trained, client, cache)}


def protected_probability(model, images):
    return float(torch.softmax(torch.as_tensor(predict_logits(model, images)), 1)[:, PROTECTED].mean())


def test_the_round_turns_the_protected_class_from_the_inversions_to_the_decoys(digits, rounds):
    client, _ = digits
    finisher, theta_star, upload, report = rounds["decoy"]
    private, decoys = finisher.inputs.private, finisher.inputs.decoys
    assert private.shape == decoys.shape == (16, *SHAPE)
    for name, tensor in rounds["plain"].state_dict().items():
        torch.testing.assert_close(theta_star.state_dict()[name], tensor, rtol=0, atol=0,
                                   msg="the finisher starts from the round trained as without decoy")
    auxiliary = finisher.classifier
    assert (predict_logits(auxiliary, decoys).argmax(1) == DECOY).mean() >= 0.9, "decoys invert the decoy class"
    before, after = ({"private": protected_probability(model, private), "decoys": protected_probability(model, decoys)}
                     for model in (theta_star, upload))
    assert before["private"] > 0.5 and after["private"] < 0.15
    assert before["decoys"] < 0.05 and after["decoys"] > 0.6
    details = report.details["decoy"]
    assert details["after"]["private_confidence"] == pytest.approx(after["private"], abs=1e-5)
    assert details["before"]["decoy_confidence"] == pytest.approx(before["decoys"], abs=1e-5)
    assert details["after"]["objective"] < details["before"]["objective"]
    assert details["after"]["private_loss_capped"] <= np.log(10) + 1e-5 < details["after"]["private_loss"]
    kept = accuracy(upload, client.images, client.labels)
    assert kept == details["after"]["record_accuracy"] and accuracy(theta_star, client.images, client.labels) == 1.0
    assert kept >= 0.9, "the records' accuracy drops by at most 10 points"


def test_the_ewc_term_holds_the_weights_the_records_need(digits, rounds):
    """omega = 0 fine-tunes on the inverted images alone; with the EWC term, the weights the
    records' loss is sensitive to (high Fisher information) move far less, and so does the
    records' accuracy."""
    client, _ = digits
    moved = {}
    for name in ("decoy", "no-ewc"):
        _, theta_star, upload, report = rounds[name]
        fisher = fisher_diagonal(theta_star, client.images, client.labels, "cpu")
        after, anchor = dict(upload.named_parameters()), dict(theta_star.named_parameters())
        moved[name] = float(sum((f * (after[n] - anchor[n]).square()).sum() for n, f in fisher.items()).detach())
        assert report.details["decoy"]["before"]["ewc"] == 0.0
        assert report.details["decoy"]["after"]["ewc"] == pytest.approx(moved[name] / 2, rel=1e-3)
    assert moved["decoy"] < 0.2 * moved["no-ewc"]
    assert (rounds["decoy"][3].details["decoy"]["after"]["record_accuracy"]
            > rounds["no-ewc"][3].details["decoy"]["after"]["record_accuracy"] + 0.1)


def test_the_fisher_information_is_the_normalized_mean_squared_gradient(digits, trained):
    client, _ = digits
    images, labels = client.images[:6], client.labels[:6]
    fisher = fisher_diagonal(trained, images, labels, "cpu")
    squares = {name: torch.zeros_like(p) for name, p in trained.named_parameters()}
    for image, label in zip(images, labels):
        loss = torch.nn.functional.cross_entropy(trained(torch.as_tensor(image[None])), torch.tensor([label]))
        gradients = torch.autograd.grad(loss, list(trained.parameters()))
        for (name, _), gradient in zip(trained.named_parameters(), gradients):
            squares[name] += gradient.square()
    mean = torch.cat([s.flatten() for s in squares.values()]).mean()
    for name, square in squares.items():
        torch.testing.assert_close(fisher[name], square / mean, rtol=1e-4, atol=1e-6)


def test_a_gmi_attacker_recovers_the_protected_class_less_often(digits, rounds):
    """The attacker's GAN never saw the protected class (GMI's public prior); an independent
    judge, a logistic regression on held-out digits, labels what it inverts."""
    client, (held_images, held_labels) = digits
    judge = LogisticRegression(max_iter=2000).fit(held_images.reshape(len(held_images), -1), held_labels)
    assert judge.score(client.images.reshape(len(client), -1), client.labels) > 0.9
    keep = client.public_labels != PROTECTED
    attacker = train_gan(client.public_images[keep], seed=11, steps=GAN["gan_steps"], lr=GAN["gan_lr"])
    rate = {}
    for name, model in (("plain", rounds["plain"]), ("decoy", rounds["decoy"][2])):
        inverted = invert_latents(attacker, model, PROTECTED, 64, iterations=200, lr=0.1, prior_weight=0.1, seed=7)
        rate[name] = float((judge.predict(inverted.reshape(len(inverted), -1)) == PROTECTED).mean())
    assert rate["plain"] >= 0.25
    assert rate["decoy"] <= 0.5 * rate["plain"]


def test_preparation_trains_once_and_is_then_loaded(digits, tmp_path):
    client, _ = digits
    calls = []

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return train_gan(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(decoy_module, "train_gan", counting)
        setup = PrepareContext(PLAN, 5, PreparationCache(tmp_path), new_model)
        built = Decoy(gan_steps=5, classifier_epochs=1).prepare(client, setup)
        PreparationCache._memo.clear()
        reused = Decoy(gan_steps=5, classifier_epochs=1, omega=1.0).prepare(client, setup)
        other = Decoy(gan_steps=6, classifier_epochs=1).prepare(client, setup)
    assert [r.kind for r in built] == ["teacher", "gan"] and not any(r.reused for r in built)
    assert all(r.reused for r in reused) and [r.key for r in reused] == [r.key for r in built]
    assert other[1].key != built[1].key and not other[1].reused and other[0].reused
    assert len(calls) == 2, "the GAN is trained for the first preparation and for other gan_steps only"


def test_composed_with_dpsgd_the_fisher_term_is_not_covered_by_epsilon(digits, tmp_path):
    client, _ = digits
    dp_model = lambda: build_model("cnn", SHAPE, 10, dp_compatible=True, seed=0)
    decoy = Decoy(gan_steps=5, classifier_epochs=1, inversion_iterations=2, finetune_steps=2)
    defense = Composition((decoy, DPSGD(epsilon=10.0)))
    defense.prepare(client, PrepareContext(PLAN, 5, PreparationCache(tmp_path), dp_model))
    report = defense.train_round(dp_model(), client, CONTEXT)
    assert report.privacy is not None and FISHER_READS_RECORDS in report.details["epsilon_not_covering"]
    assert report.details["decoy"]["steps"] == 2
    alone = decoy.train_round(new_model(), client, CONTEXT)
    assert "epsilon_not_covering" not in alone.details and "decoy" in alone.details


@pytest.mark.parametrize("params, message", [
    ({"protected_class": 3, "decoy_class": 3}, "protected_class and decoy_class are both 3"),
    ({"alpha": -1.0}, "alpha=-1.0 is out of range"),
    ({"omega": -0.5}, "omega=-0.5 is out of range"),
    ({"inversions": 2.5}, "inversions=2.5 must be a whole number"),
    ({"finetune_lr": 0}, "finetune_lr=0 is out of range"),
    ({"decoy_class": "one"}, "decoy_class='one' is not a number"),
])
def test_bad_parameters_are_one_line_errors(params, message):
    with pytest.raises(FedmiaError, match=message) as error:
        Decoy(**params)
    assert "\n" not in str(error.value)


def test_classes_outside_the_data_and_a_missing_public_pool_are_one_line_errors(digits, tmp_path):
    client, _ = digits
    setup = PrepareContext(PLAN, 5, PreparationCache(tmp_path), new_model)
    with pytest.raises(FedmiaError, match="decoy_class=12 is not one of the 10 classes"):
        Decoy(decoy_class=12).prepare(client, setup)
    alone = ClientData(0, client.images, client.labels, 10)
    with pytest.raises(FedmiaError, match="needs a public pool"):
        Decoy().prepare(alone, setup)
