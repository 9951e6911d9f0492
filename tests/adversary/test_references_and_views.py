"""The reference-model bank (paired membership, trained like the target, cached by content)
and the round views each adversary gets, on a real in-process federation."""

import numpy as np
import pytest
import torch

from fedmia.adversary.references import ReferenceRecipe, paired_memberships, reference_bank, reference_pool
from fedmia.adversary.views import client_rounds, global_rounds, malicious_rounds
from fedmia.config import resolve_config
from fedmia.defenses import DefenseSpec
from fedmia.evaluation import reattack
from fedmia.rundir import FINAL_GLOBAL_MODEL, global_round_name, upload_name
from fedmia.summary import check_run
from tests.inprocess import federate_and_attack


@pytest.fixture(scope="module")
def attacked(tmp_path_factory):
    out = tmp_path_factory.mktemp("adversaries") / "run"
    config = resolve_config({"clients": 3, "rounds": 3, "local_epochs": 1, "keep_uploads": "every:2",
                             "adversaries": ["server", "querier"], "querier_output": "top-k:2",
                             "attacks": ["loss", "correctness"], "attack_workers": 1, "out": str(out),
                             "client": [{"ids": [1], "defense": "dpsgd", "epsilon": 8.0},
                                        {"ids": [2], "role": "malicious", "attack": "passive"}]}, {})
    return federate_and_attack(config)


def same_weights(first: torch.nn.Module, second: torch.nn.Module) -> bool:
    return all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))


def test_every_adversary_gets_its_own_scope_and_check_recomputes_them(attacked):
    run, results = attacked
    assert set(results["adversaries"]) == {"querier", "malicious:2"}
    assert results["adversaries"]["malicious:2"]["adversary"] == "client:2"
    assert all(table["attacks"]["loss"]["seconds"] >= 0 for table in results["adversaries"].values())
    assert check_run(run.rundir.path) == []


def test_the_keep_policy_keeps_the_rounds_it_names_and_the_last_upload(attacked):
    run, _ = attacked
    assert run.rundir.has_model(upload_name(0, 2)) and not run.rundir.has_model(upload_name(0, 1))
    records = run.rundir.read_metrics()
    views = client_rounds(run, 0, records)
    assert [v.server_round for v in views] == [2, 3]
    assert len(views[0].others) == 2 and views[1].others == ()
    start = run.model_from_state(run.rundir.load_model(global_round_name(1)))
    assert same_weights(views[0].start, start)


def test_global_and_malicious_views_follow_the_models_sent(attacked):
    run, _ = attacked
    records = run.rundir.read_metrics()
    assert [v.server_round for v in global_rounds(run, records)] == [1, 2, 3]
    received = malicious_rounds(run, 2, records)
    final = run.model_from_state(run.rundir.load_model(FINAL_GLOBAL_MODEL))
    assert len(received) == 3 and same_weights(received[-1].model, final)


def test_paired_memberships_put_every_pool_record_in_one_model_of_each_pair():
    pool = np.arange(100, 140)
    sets = paired_memberships(pool, 4, 20, np.random.default_rng(0))
    for first, second in (sets[0], sets[1]), (sets[2], sets[3]):
        assert len(np.intersect1d(first, second)) == 0
        assert np.array_equal(np.union1d(first, second), pool)
    candidates = np.arange(10)
    online = reference_pool(candidates, np.arange(50, 90), 15, True, np.random.default_rng(0))
    assert np.isin(candidates, online).all() and len(online) == 30
    assert np.array_equal(reference_pool(candidates, np.arange(50, 90), 15, False, np.random.default_rng(0)),
                          np.arange(50, 90))


def test_the_bank_is_cached_by_content_and_retrained_when_it_changes(attacked):
    run, _ = attacked
    candidates = run.split.clients[0][:20]
    recipe = ReferenceRecipe(global_round_name(1), (2,), DefenseSpec(), 20)
    first, cached = reference_bank(run, recipe, candidates, 2, True, seed=5)
    again, cached_again = reference_bank(run, recipe, candidates, 2, True, seed=5)
    assert not cached and cached_again
    assert all(same_weights(a.model, b.model) and np.array_equal(a.members, b.members)
               for a, b in zip(first, again))
    inside = sum(reference.trained_on(candidates) for reference in first)
    assert (inside == 1).all(), "online pairs: every candidate is IN for exactly one model of the pair"
    other_start = ReferenceRecipe(global_round_name(2), (3,), DefenseSpec(), 20)
    _, cached_other = reference_bank(run, other_start, candidates, 2, True, seed=5)
    assert not cached_other


def test_references_train_with_the_defense_the_adversary_assumes(attacked):
    """Client 1's DP-SGD recipe adds noise: same members and seed, different weights from
    plain SGD."""
    run, _ = attacked
    candidates = run.split.clients[1][:20]
    plain = ReferenceRecipe(global_round_name(1), (2,), DefenseSpec(), 20)
    noisy = ReferenceRecipe(global_round_name(1), (2,), run.config.defenses[1], 20)
    (a,), _ = reference_bank(run, plain, candidates, 1, False, seed=3)
    (b,), _ = reference_bank(run, noisy, candidates, 1, False, seed=3)
    assert np.array_equal(a.members, b.members) and not same_weights(a.model, b.model)


def test_a_second_attack_phase_loads_the_reference_models_it_trained(attacked):
    run, _ = attacked
    first = reattack(run.rundir.path, {"attacks": ("rmia",)}, workers=1)
    scores = run.rundir.load_scores("client:0", "rmia")["scores"]
    second = reattack(run.rundir.path, {"attacks": ("rmia",)}, workers=1)
    tables = [second["global"], *[r for r in second["clients"] if r.get("attacks")],
              *second["adversaries"].values()]
    assert not first["global"]["seconds"]["references_cached"]
    assert all(table["seconds"]["references_cached"] for table in tables)
    assert np.array_equal(run.rundir.load_scores("client:0", "rmia")["scores"], scores)
    assert check_run(run.rundir.path) == []
