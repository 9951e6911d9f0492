"""A real federation: Flower's simulation runtime, Ray actors, the whole pipeline, 3 clients."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from sklearn.metrics import roc_auc_score

from fedmia.cli import main
from fedmia.data import load_dataset
from fedmia.models import build_model
from fedmia.summary import check_run

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "three-clients"
    assert main(["simulate", "--clients", "3", "--rounds", "2", "--seed", "7", "--out", str(out)]) == 0
    return out


def test_run_directory_holds_every_documented_file(run_dir):
    for name in ("config.toml", "manifest.json", "metrics.jsonl", "results.json", "report.md",
                 "roc.png", "privacy.png", "models/global_round_002.safetensors", "models/global_final.safetensors",
                 "models/client_000.safetensors", "scores/global__loss.npz", "scores/client-2__loss.npz"):
        assert (run_dir / name).exists(), name
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert len(manifest["split"]["clients"]) == 3
    assert manifest["packages"]["flwr"] and manifest["packages"]["ray"]


def test_metrics_has_one_line_per_round_with_every_client(run_dir):
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [line["round"] for line in lines] == [0, 1, 2]
    assert [c["client"] for c in lines[2]["clients"]] == [0, 1, 2]
    assert lines[2]["test_accuracy"] > 0.6


def test_saved_scores_reproduce_results_auc(run_dir):
    results = json.loads((run_dir / "results.json").read_text())
    saved = np.load(run_dir / "scores" / "global__loss.npz")
    assert roc_auc_score(saved["labels"], saved["scores"]) == pytest.approx(
        results["global"]["attacks"]["loss"]["auc"], abs=1e-12)
    assert saved["labels"].sum() == (1 - saved["labels"]).sum()
    assert check_run(run_dir) == []


def independent_scores(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, np.ndarray]:
    """Three attack signals from torch's own functions, not fedmia's attack code."""
    probs = torch.softmax(logits, dim=1)
    return {"loss": (-torch.nn.functional.cross_entropy(logits, labels, reduction="none")).numpy(),
            "confidence": probs.max(dim=1).values.numpy(),
            "correctness": (logits.argmax(dim=1) == labels).double().numpy()}


def test_scores_recomputed_from_saved_models_and_manifest_indices(run_dir):
    """Rebuild every target from models/ and the manifest, check that each score file's samples
    are the manifest's members and non-members of that scope, score them again, compare."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    split, spec = manifest["split"], manifest["model"]
    dataset = load_dataset(manifest["dataset"]["name"])
    all_members = [i for part in split["clients"] for i in part]
    targets = [("global", "global_final", all_members)]
    targets += [(f"client:{k}", f"client_{k:03d}", part) for k, part in enumerate(split["clients"])]
    for scope, model_name, members in targets:
        model = build_model(spec["name"], tuple(spec["arguments"]["input_shape"]), spec["arguments"]["num_classes"],
                            dp_compatible=spec["dp_compatible"], seed=manifest["seed"])
        model.load_state_dict(load_file(str(run_dir / "models" / f"{model_name}.safetensors")))
        model.eval()
        for attack in ("loss", "confidence", "correctness"):
            saved = np.load(run_dir / "scores" / f"{scope.replace(':', '-')}__{attack}.npz")
            indices, membership = saved["indices"], saved["labels"]
            assert set(indices[membership == 1]) <= set(members)
            assert set(indices[membership == 0]) <= set(split["nonmembers"])
            assert len(set(indices)) == len(indices) and membership.sum() == (1 - membership).sum()
            with torch.no_grad():
                logits = model(torch.as_tensor(dataset.images[indices])).double()
            fresh = independent_scores(logits, torch.as_tensor(dataset.labels[indices]))[attack]
            np.testing.assert_allclose(saved["scores"], fresh, rtol=1e-6, atol=1e-9, err_msg=f"{scope} {attack}")


def test_utility_after_training_and_held_out_bound_are_reported(run_dir):
    results = json.loads((run_dir / "results.json").read_text())
    for scope in [results["global"], *results["clients"]]:
        assert 0 <= scope["train_accuracy"] <= 1 and 0 <= scope["test_accuracy"] <= 1
        assert scope["generalization_gap"] == pytest.approx(scope["train_accuracy"] - scope["test_accuracy"])
        assert scope["eps_lower_bound"] == scope["eps_bound"]["eps_lower_bound"]
        assert scope["eps_lower_bound_optimistic"] >= 0
    assert "held-out" in (run_dir / "report.md").read_text()


def test_results_have_global_and_per_client_tables_and_time_split(run_dir):
    results = json.loads((run_dir / "results.json").read_text())
    assert {"ray_startup_s", "training_s", "attacks_s", "report_s", "total_s"} <= set(results["timing"])
    rows = results["clients"]
    assert [row["client"] for row in rows] == [0, 1, 2]
    for row in rows:
        assert row["trained"] and 0 <= row["attacks"]["loss"]["auc"] <= 1
        assert row["attacks"]["loss"]["n_members"] == row["n_train"]


def test_final_global_model_matches_the_last_round(run_dir):
    final = load_file(str(run_dir / "models" / "global_final.safetensors"))
    last = load_file(str(run_dir / "models" / "global_round_002.safetensors"))
    assert final.keys() == last.keys()
    assert all(np.array_equal(final[k].numpy(), last[k].numpy()) for k in final)


def test_same_seed_same_split_and_initial_model(run_dir, tmp_path):
    from fedmia.config import resolve_config
    from fedmia.run import prepare_run
    import tomllib

    config = resolve_config(tomllib.loads((run_dir / "config.toml").read_text()), {"out": str(tmp_path / "again")})
    again = prepare_run(config)
    first = json.loads((run_dir / "manifest.json").read_text())
    assert again.manifest()["split"] == first["split"]
    initial = load_file(str(run_dir / "models" / "global_round_000.safetensors"))
    assert all(np.array_equal(initial[k].numpy(), v.numpy()) for k, v in again.new_model().state_dict().items())


def test_attack_phase_reruns_from_the_saved_models_and_check_agrees(run_dir, capsys):
    """Runs last: it rewrites the run's results with a single attack."""
    assert main(["attack", str(run_dir), "--attacks", "loss"]) == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert list(results["global"]["attacks"]) == ["loss"]
    assert main(["check", str(run_dir)]) == 0
    assert "matches" in capsys.readouterr().out


def test_attack_and_check_need_a_finished_run(tmp_path, capsys):
    assert main(["attack", str(tmp_path)]) == 2
    assert main(["check", str(tmp_path)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 2
