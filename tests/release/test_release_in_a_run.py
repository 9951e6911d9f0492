"""A release defense in a run: fitted on the final model, applied to the querier's answers
only, reported; and refused up front where it cannot act."""

import numpy as np
import pytest

from fedmia.config import RunConfig
from fedmia.errors import FedmiaError
from fedmia.timing import without_timings
from tests.inprocess import federate_and_attack


def config(tmp_path, **overrides):
    settings = dict(clients=2, rounds=1, public_size=200, adversaries=("server", "querier"),
                    attacks=("loss", "confidence"), out=str(tmp_path / "run"), attack_workers=1)
    return RunConfig(**{**settings, **overrides})


def test_memguard_changes_what_the_querier_sees_and_nothing_the_server_sees(tmp_path):
    _, plain = federate_and_attack(config(tmp_path / "plain"))
    run, guarded = federate_and_attack(config(tmp_path / "guarded", release="memguard:epsilon=1.0"))
    release = guarded["adversaries"]["querier"]["release"]
    assert release["name"] == "memguard" and release["rows"] > 0 and release["max_expected_l1"] <= 1.0 + 1e-9
    assert without_timings(guarded["global"]) == without_timings(plain["global"]), "the server's view is untouched"
    raw = plain["adversaries"]["querier"]["attacks"]["confidence"]["auc"]
    released = guarded["adversaries"]["querier"]["attacks"]["confidence"]["auc"]
    assert released != raw
    report = (run.rundir.path / "report.md").read_text()
    assert "Release defense: `memguard`" in report and "predicted label unchanged" in report
    scores = np.load(run.rundir.path / "scores" / "querier__confidence.npz")
    assert np.isfinite(scores["scores"]).all()


@pytest.mark.parametrize("overrides, problem", [
    ({"adversaries": ("server",), "release": "top-k:k=1"}, "add the querier"),
    ({"public_size": 0, "release": "memguard"}, "set public_size"),
    ({"release": "memguard:epsilon=5"}, "release defense 'memguard' parameter epsilon"),
    ({"release": "blur"}, "unknown release defense"),
])
def test_a_release_that_cannot_act_is_refused_up_front(tmp_path, overrides, problem):
    with pytest.raises(FedmiaError, match=problem) as error:
        config(tmp_path, **overrides)
    assert "\n" not in str(error.value)
