"""The attack phase on a real (in-process) federation: utility measured after training, the
held-out bound, and what results.json, report.md and `check` make of them."""

import json
from dataclasses import replace

import numpy as np
import pytest

from fedmia.config import resolve_config
from fedmia.errors import FedmiaError
from fedmia.evaluation import client_scope, train_shadow
from fedmia.rundir import FINAL_GLOBAL_MODEL, client_model_name
from fedmia.summary import check_run
from fedmia.training import accuracy
from tests.inprocess import federate_and_attack


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    """Client 0 trains with DP-SGD (it reports no training accuracy), client 1 without."""
    out = tmp_path_factory.mktemp("runs") / "two-clients"
    config = resolve_config({}, {"clients": 2, "rounds": 1, "local_epochs": 1, "seed": 3, "out": str(out),
                                 "attacks": ("loss", "correctness")}, "dpsgd", {"epsilon": "8,inf"})
    return federate_and_attack(config)


def test_train_accuracy_is_the_upload_on_its_own_members_after_training(attacked):
    run, results = attacked
    rows = results["clients"]
    assert [row["defense"] for row in rows] == ["dpsgd", "none"]
    reported = [line["clients"] for line in run.rundir.read_metrics()[1:]][0]
    assert reported[0]["train_accuracy"] is None, "DP-SGD releases no training accuracy (NaN, written as null)"
    for row in rows:
        upload = run.model_from_state(run.rundir.load_model(client_model_name(row["client"])))
        members = run.split.clients[row["client"]]
        expected = accuracy(upload, run.images(members), run.labels(members))
        assert row["train_accuracy"] == pytest.approx(expected, abs=1e-12)
        assert row["generalization_gap"] == pytest.approx(row["train_accuracy"] - row["test_accuracy"])
    final = run.model_from_state(run.rundir.load_model(FINAL_GLOBAL_MODEL))
    members = run.split.members
    glob = results["global"]
    assert glob["train_accuracy"] == pytest.approx(accuracy(final, run.images(members), run.labels(members)))
    assert glob["generalization_gap"] == pytest.approx(glob["train_accuracy"] - glob["test_accuracy"])


def test_results_keep_the_held_out_bound_and_label_the_optimistic_one(attacked):
    run, results = attacked
    for scope in [results["global"], *results["clients"]]:
        bound = scope["eps_bound"]
        assert scope["eps_lower_bound"] == bound["eps_lower_bound"]
        assert bound["attack"] in ("loss", "correctness") and "split-half" in bound["procedure"]
        optimistic = max(a["eps_lower_bound_optimistic"] for a in scope["attacks"].values())
        assert scope["eps_lower_bound_optimistic"] == optimistic
        n = scope["attacks"]["loss"]["n_members"]
        assert abs(bound["n_members"] - n / 2) <= 0.5 and bound["n_nonmembers"] == bound["n_members"]
    report = (run.rundir.path / "report.md").read_text()
    assert "Measured epsilon lower bound (held-out, 95%)" in report and "optimistic eps lb" in report
    assert "| gap |" in report and "PROTOCOL.md" in report


def test_check_recomputes_the_held_out_bound_from_the_saved_halves(attacked):
    run, results = attacked
    assert check_run(run.rundir.path) == []
    scope = client_scope(1)
    saved = {name: run.rundir.load_scores(scope, name) for name in ("loss", "correctness")}
    try:
        for name, data in saved.items():
            swapped = (1 - data["halves"]).astype(np.int8)
            run.rundir.save_scores(scope, name, data["scores"], data["labels"], data["indices"], swapped)
        assert any("held-out bound" in line for line in check_run(run.rundir.path))
    finally:
        for name, data in saved.items():
            run.rundir.save_scores(scope, name, data["scores"], data["labels"], data["indices"], data["halves"])
    assert json.loads((run.rundir.path / "results.json").read_text())["clients"][1]["eps_bound"]


def test_a_diverging_shadow_model_is_a_one_line_error_not_a_crash(attacked):
    run, _ = attacked
    diverging = replace(run, config=replace(run.config, lr=1e6))
    with pytest.raises(FedmiaError, match="shadow model diverged.*smaller --lr"):
        train_shadow(diverging, run.new_model(), 40, 2, seed=0)
