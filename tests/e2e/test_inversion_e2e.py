"""Inversion in a real federation (Flower + Ray): FedSGD clients, a malicious client, gradient
inversion of every honest upload by the server and model inversion of the final model by the
server and the malicious client, recomputed by `check`."""

import json

import numpy as np
import pytest

from fedmia.cli import main
from fedmia.summary import check_run

pytestmark = pytest.mark.e2e

CONFIG = """
clients = 3
rounds = 1
dataset_size = 150
local_epochs = 1
batch_size = 0
attacks = ["loss"]
inversions = ["inverting-gradients:iterations=100:restarts=1", "gmi:gan_steps=60:iterations=30"]
protected_classes = [2]
[[client]]
ids = "0-1"
defense = "none"
[[client]]
ids = "2"
role = "malicious"
attack = "passive"
"""


def test_server_and_malicious_client_invert_and_check_agrees(tmp_path, capsys):
    (tmp_path / "config.toml").write_text(CONFIG)
    out = tmp_path / "run"
    assert main(["simulate", "--config", str(tmp_path / "config.toml"), "--out", str(out),
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "inversion inverting-gradients" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    entries = results["inversion"]["results"]
    gradient = [e for e in entries if e["kind"] == "gradient-inversion"]
    model = [e for e in entries if e["kind"] == "model-inversion"]
    assert [e["scope"] for e in gradient] == ["client:0", "client:1", "client:2"]
    assert all(e["local_steps"] == 1 and e["metrics"]["psnr"] > 10 for e in gradient)
    assert [(e["scope"], e["adversary"]) for e in model] == [("global", "server"), ("malicious:2", "client:2")]
    own = set(json.loads((out / "manifest.json").read_text())["split"]["clients"][2])
    malicious = np.load(out / model[1]["file"])
    assert not own & set(malicious["private_indices"].tolist())
    assert model[1]["details"]["gan_classes"] == [c for c in range(10) if c != 2]
    assert results["timing"]["inversion_s"] > 0
    assert check_run(out) == []
