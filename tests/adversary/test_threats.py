"""Threat models and attack specs: what each adversary may run, checked before anything trains."""

import numpy as np
import pytest
from torch import nn

from fedmia.adversary import KeepPolicy, adversaries_running, threat_models
from fedmia.attacks import LABELS, OUTPUTS, AttackSpec, OutputGranularity, TargetView, parse_attack_specs
from fedmia.config import resolve_config
from fedmia.errors import FedmiaError


def test_specs_parse_parameters_and_keep_a_canonical_label():
    spec = AttackSpec.parse("loss")
    assert spec.label == "loss" and spec.params == {}
    with pytest.raises(FedmiaError, match="has no parameter 'refs'"):
        AttackSpec.parse("loss:refs=4")
    with pytest.raises(FedmiaError, match="not key=value"):
        AttackSpec.parse("loss:refs")
    with pytest.raises(FedmiaError, match="unknown attack 'lira2'"):
        AttackSpec.parse("lira2")
    with pytest.raises(FedmiaError, match="listed twice"):
        parse_attack_specs("loss,loss")
    restricted = AttackSpec.from_table({"name": "correctness", "adversaries": ["querier"]})
    assert restricted.label == "correctness:adversaries=querier"
    assert AttackSpec.parse(restricted.label) == restricted


def test_attack_tables_in_a_config_file_become_specs():
    config = resolve_config({"attack": [{"name": "loss"}, {"name": "correctness", "adversaries": ["server"]}]}, {})
    assert config.attacks == ("loss", "correctness:adversaries=server")
    with pytest.raises(FedmiaError, match="both attacks"):
        resolve_config({"attacks": ["loss"], "attack": [{"name": "loss"}]}, {})


def test_an_attack_its_adversary_cannot_run_is_a_one_line_error():
    with pytest.raises(FedmiaError, match="needs outputs access, which the querier adversary lacks"):
        resolve_config({}, {"adversaries": ("server", "querier"), "querier_output": "label",
                            "attacks": ("loss:adversaries=server+querier",)})
    with pytest.raises(FedmiaError, match="names adversary 'querier', which this run does not have"):
        resolve_config({}, {"attacks": ("loss:adversaries=querier",)})


def test_unrestricted_attacks_run_wherever_they_can():
    models = threat_models(("server", "querier"), ("honest", "malicious:passive"), "label")
    assert [m.name for m in models] == ["server", "querier", "client:1"]
    assert [m.name for m in adversaries_running(AttackSpec.parse("loss"), models)] == ["server", "client:1"]
    assert [m.name for m in adversaries_running(AttackSpec.parse("correctness"), models)] == [
        "server", "querier", "client:1"]


@pytest.mark.parametrize("flags, message", [
    ({"adversaries": ("querier",)}, "leaves out server"),
    ({"adversaries": ("server", "server")}, "listed twice"),
    ({"adversaries": ("server", "client:3")}, "role = \"malicious\""),
    ({"adversaries": ("server", "oracle")}, "unknown adversary"),
    ({"querier_output": "top-k:0"}, "querier output"),
    ({"keep_uploads": "some"}, "keep-uploads"),
    ({"attacks": ("fedmia",)}, "no attack in --attacks runs on every scope of the server"),
    ({"adversaries": ("server", "querier"), "querier_output": "label", "attacks": ("loss",)},
     "no attack in --attacks runs on every scope of the querier"),
])
def test_bad_adversary_settings_are_one_line_errors(flags, message):
    with pytest.raises(FedmiaError, match=message):
        resolve_config({}, flags)


def test_malicious_roles_come_from_client_groups():
    config = resolve_config({"clients": 4, "client": [{"ids": [3], "role": "malicious", "attack": "active"}]}, {})
    assert config.roles == ("honest", "honest", "honest", "malicious:active")
    again = resolve_config(__import__("tomllib").loads(config.to_toml()), {})
    assert again.roles == config.roles
    with pytest.raises(FedmiaError, match="not one of passive, active"):
        resolve_config({"clients": 4, "client": [{"ids": [3], "role": "malicious", "attack": "loud"}]}, {})


def test_keep_policy_rounds():
    assert [KeepPolicy.parse("every:2").keeps(r) for r in (1, 2, 3, 4)] == [False, True, False, True]
    assert KeepPolicy.parse("all").keeps(3) and not KeepPolicy.parse("last").keeps(3)


def test_top_k_reveals_exact_top_posteriors_and_spreads_the_rest():
    logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    revealed = OutputGranularity.parse("top-k:2").reveal(logits)
    assert np.allclose(np.exp(revealed), [[0.5, 0.3, 0.1, 0.1]])
    assert np.array_equal(OutputGranularity.parse("logits").reveal(logits), logits)


def test_a_target_view_gives_only_the_granted_access():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    images = np.ones((2, 1, 2, 2), dtype=np.float32)
    labels_only = TargetView(model, frozenset({LABELS}))
    assert labels_only.predicted_labels(images).shape == (2,)
    for denied in (lambda: labels_only.logits(images), lambda: labels_only.model, lambda: labels_only.rounds):
        with pytest.raises(PermissionError):
            denied()
    assert TargetView(model, frozenset({OUTPUTS})).logits(images).shape == (2, 3)


@pytest.mark.parametrize("classes, k", [(3, 1), (10, 1), (10, 3), (7, 6)])
def test_top_k_answers_keep_the_label_even_when_every_class_ties(classes, k):
    """Rounding of the spread mass once lifted a hidden class above the label on all-tied rows."""
    logits = np.zeros((4, classes)) + np.array([[0.0], [3.1], [-7.3], [1e-9]])
    revealed = OutputGranularity(top_k=k).reveal(logits)
    assert (revealed.argmax(axis=1) == logits.argmax(axis=1)).all()
    assert np.allclose(np.exp(revealed).sum(axis=1), 1.0)
