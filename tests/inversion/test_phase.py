"""The inversion phase of a run: a real federation (tests/inprocess.py, every client training
as the ClientApp does), then gradient inversion on each FedSGD client's upload and model
inversion on the final model, saved, reported and recomputed by `check`."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fedmia.cli import main
from fedmia.config import resolve_config
from fedmia.errors import FedmiaError
from fedmia.evaluation import evaluate_privacy
from fedmia.inversion.phase import FOLDER, inversion_phase
from fedmia.report import write_outputs
from fedmia.summary import check_run
from fedmia.timing import RunTimer
from tests.inprocess import train_federation

INVERSIONS = ("inverting-gradients:iterations=150:restarts=1", "mi-face:iterations=60")


def config(tmp_path, **overrides):
    settings = {"clients": 3, "rounds": 1, "local_epochs": 1, "batch_size": 0, "dataset_size": 120,
                "attacks": ("loss",), "inversions": INVERSIONS, "protected_classes": (0, 3),
                "out": str(tmp_path / "run"), "cache_dir": str(tmp_path / "cache")}
    settings.update(overrides)
    return resolve_config({}, settings)


@pytest.fixture(scope="module")
def inverted(tmp_path_factory, one_torch_thread):
    tmp_path = tmp_path_factory.mktemp("inversion")
    run = train_federation(config(tmp_path))
    timer = RunTimer()
    results = write_outputs(run, {**evaluate_privacy(run, workers=1), **inversion_phase(run, timer),
                                  "client_level_dp": None}, timer)
    return run, results


def test_every_fedsgd_upload_is_inverted_against_its_clients_records(inverted):
    run, results = inverted
    gradient = [e for e in results["inversion"]["results"] if e["kind"] == "gradient-inversion"]
    assert [e["client"] for e in gradient] == [0, 1, 2]
    for entry in gradient:
        assert entry["local_steps"] == 1 and entry["num_examples"] == len(run.split.clients[entry["client"]])
        saved = np.load(run.rundir.path / entry["file"])
        assert np.array_equal(saved["truth_indices"], run.split.clients[entry["client"]])
        assert saved["images"].shape == (entry["num_examples"], 1, 8, 8)
        assert 0.0 <= saved["images"].min() and saved["images"].max() <= 1.0
        assert entry["metrics"]["images"] == entry["num_examples"]
        assert (run.rundir.path / entry["file"]).with_suffix(".png").is_file()
    # 16 records in one full batch through the BatchNorm cnn: clearly better than chance pairing
    assert max(e["metrics"]["psnr"] for e in gradient) > 12.0


def test_model_inversion_covers_each_protected_class_and_is_judged_by_the_evaluator(inverted):
    run, results = inverted
    model = [e for e in results["inversion"]["results"] if e["kind"] == "model-inversion"]
    assert [(e["scope"], e["class"]) for e in model] == [("global", 0), ("global", 3)]
    for entry in model:
        saved = np.load(run.rundir.path / entry["file"])
        members = np.concatenate(run.split.clients)
        expected = members[run.labels(members) == entry["class"]]
        assert np.array_equal(np.sort(saved["private_indices"]), np.sort(expected))
        assert 0.0 <= entry["metrics"]["attack_accuracy"] <= 1.0
    evaluator = results["inversion"]["evaluator"]
    assert evaluator["records"] == len(run.split.test) and evaluator["accuracy"] > 0.5
    assert (run.rundir.path / FOLDER / "evaluator.safetensors").is_file()


def test_report_shows_the_inversions_and_check_recomputes_them(inverted):
    run, results = inverted
    report = (run.rundir.path / "report.md").read_text()
    assert "## Reconstruction (inversion attacks)" in report and "PSNR" in report
    assert check_run(run.rundir.path) == []


def test_check_catches_an_edited_reconstruction_number(inverted, tmp_path):
    run, results = inverted
    edited = json.loads((run.rundir.path / "results.json").read_text())
    edited["inversion"]["results"][0]["metrics"]["psnr"] += 1.0
    (run.rundir.path / "results.json").write_text(json.dumps(edited))
    try:
        mismatches = check_run(run.rundir.path)
    finally:
        (run.rundir.path / "results.json").write_text(json.dumps(results))
    assert len(mismatches) == 1 and "psnr" in mismatches[0]


def test_attack_command_redoes_the_phase_with_other_inversions(inverted, capsys):
    run, _ = inverted
    assert main(["attack", str(run.rundir.path), "--inversions", "idlg:iterations=5",
                 "--attack-workers", "1"]) == 0
    results = json.loads((run.rundir.path / "results.json").read_text())
    assert {e["attack"] for e in results["inversion"]["results"]} == {"idlg:iterations=5"}
    assert sorted(p.name for p in (run.rundir.path / FOLDER).iterdir()) == sorted(
        f"client-{k}__idlg-iterations-5.{suffix}" for k in range(3) for suffix in ("npz", "png"))
    assert main(["check", str(run.rundir.path)]) == 0
    assert "inversion idlg:iterations=5" in capsys.readouterr().out


def test_a_protected_class_outside_the_dataset_is_one_line_error(tmp_path):
    run = train_federation(config(tmp_path, protected_classes=(10,), inversions=("mi-face:iterations=5",)))
    with pytest.raises(FedmiaError, match="protected class 10 is not a class of digits"):
        inversion_phase(run, RunTimer())
