"""The run directory: refusing to write over a run (or anything else), verifying a finished run
before `attack` and `check` read it, and keeping scores/ in step with results.json.

The finished run is trained by the real pieces without Ray (`tests.inprocess`), then attacked
and reported through `python -m fedmia attack`.
"""

import json
import shutil
import time

import numpy as np
import pytest
import torch
from safetensors.torch import save

from fedmia.cli import main
from fedmia.config import RunConfig
from fedmia.errors import FedmiaError
from fedmia.rundir import RunDirectory
from tests.inprocess import train_federation


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 3-client, 1-round run, trained in this process, then attacked and reported by the CLI."""
    path = tmp_path_factory.mktemp("runs") / "finished"
    train_federation(RunConfig(clients=3, rounds=1, local_epochs=1, seed=5, out=str(path)))
    assert main(["attack", str(path)]) == 0
    assert main(["check", str(path)]) == 0
    return path


@pytest.fixture
def run_copy(finished_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


def snapshot(path) -> dict[str, bytes]:
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("fedmia: error: ") and "Traceback" not in err
    return err


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def garble(path):
    data = bytearray(path.read_bytes())
    data[:16] = b"\xff" * 16
    path.write_bytes(bytes(data))


DAMAGE_FOR_ATTACK = {
    "truncated client model": ("models/client_001.safetensors", truncate),
    "corrupted final model": ("models/global_final.safetensors", garble),
    "missing client model": ("models/client_002.safetensors", lambda p: p.unlink()),
    "missing round model": ("models/global_round_000.safetensors", lambda p: p.unlink()),
    "missing manifest": ("manifest.json", lambda p: p.unlink()),
    "truncated manifest": ("manifest.json", truncate),
    "manifest without split": ("manifest.json",
                               lambda p: p.write_text(json.dumps({**json.loads(p.read_text()), "split": {}}))),
    "truncated config": ("config.toml", truncate),
    "missing config": ("config.toml", lambda p: p.unlink()),
    "truncated metrics": ("metrics.jsonl", truncate),
    "truncated results": ("results.json", truncate),
    "model of another architecture": ("models/client_000.safetensors",
                                      lambda p: p.write_bytes(save({"weight": torch.zeros(3, 3)}))),
}


@pytest.mark.parametrize("damage", DAMAGE_FOR_ATTACK)
def test_attack_names_the_damaged_file_before_any_work(run_copy, capsys, damage):
    name, spoil = DAMAGE_FOR_ATTACK[damage]
    spoil(run_copy / name)
    before = snapshot(run_copy)
    started = time.perf_counter()
    assert main(["attack", str(run_copy)]) == 2
    assert time.perf_counter() - started < 5, "the directory must be checked before the attack phase"
    message = one_line_error(capsys)
    assert str(run_copy / name) in message
    assert snapshot(run_copy) == before, "nothing may be written when the directory is damaged"


def spoil_npz(path):
    arrays = dict(np.load(path))
    np.savez(path, scores=arrays["scores"][:-1], labels=arrays["labels"], indices=arrays["indices"])


DAMAGE_FOR_CHECK = {
    "truncated results": ("results.json", truncate),
    "missing results": ("results.json", lambda p: p.unlink()),
    "results without the global table": ("results.json",
                                         lambda p: p.write_text(json.dumps({"clients": []}))),
    "missing score file": ("scores/client-1__loss.npz", lambda p: p.unlink()),
    "truncated score file": ("scores/global__entropy.npz", truncate),
    "corrupted score file": ("scores/client-0__confidence.npz", garble),
    "score arrays of different lengths": ("scores/global__loss.npz", spoil_npz),
}


@pytest.mark.parametrize("damage", DAMAGE_FOR_CHECK)
def test_check_names_the_damaged_file(run_copy, capsys, damage):
    name, spoil = DAMAGE_FOR_CHECK[damage]
    spoil(run_copy / name)
    assert main(["check", str(run_copy)]) == 2
    message = one_line_error(capsys)
    assert str(run_copy / name) in message


def test_attack_with_fewer_attacks_leaves_only_their_scores(run_copy, capsys):
    """`attack RUN --attacks loss,confidence` used to leave the other attacks' score files."""
    assert len(list((run_copy / "scores").glob("*__entropy.npz"))) == 4
    assert main(["attack", str(run_copy), "--attacks", "loss,confidence"]) == 0
    names = sorted(p.name for p in (run_copy / "scores").iterdir())
    assert names == sorted(f"{scope}__{attack}.npz" for scope in ("global", "client-0", "client-1", "client-2")
                           for attack in ("loss", "confidence"))
    assert main(["check", str(run_copy)]) == 0


def test_attack_refuses_empty_and_repeated_attack_lists_before_any_work(run_copy, capsys):
    before = snapshot(run_copy)
    for attacks in ("", "loss,loss", "loss,,confidence", "magic"):
        assert main(["attack", str(run_copy), "--attacks", attacks]) == 2
        one_line_error(capsys)
    assert snapshot(run_copy) == before


def test_a_run_directory_is_refused_unless_overwrite_which_clears_it(run_copy):
    (run_copy / "preparation.json").write_text("{}")
    (run_copy / "prepared").mkdir()
    (run_copy / "prepared" / "client-0-diffusion-mixup-closest-pairs.png").write_bytes(b"png")
    with pytest.raises(FedmiaError, match=f"{run_copy}.*--overwrite"):
        RunDirectory(run_copy).ensure_fresh(overwrite=False)
    RunDirectory(run_copy).ensure_fresh(overwrite=True)
    assert list(run_copy.iterdir()) == []


@pytest.mark.parametrize("stranger", ["notes.txt", "models/readme.md", "scores/keep.csv", "src/"])
def test_overwrite_never_clears_a_folder_that_is_not_a_run(run_copy, stranger):
    target = run_copy / stranger
    target.mkdir() if stranger.endswith("/") else target.write_text("mine")
    before = snapshot(run_copy)
    with pytest.raises(FedmiaError, match="not a fedmia run directory.*--overwrite"):
        RunDirectory(run_copy).ensure_fresh(overwrite=True)
    assert snapshot(run_copy) == before and target.exists()


def test_a_folder_with_only_a_config_file_is_not_a_run(tmp_path):
    """A scenario folder holding the user's own config.toml must never be cleared."""
    (tmp_path / "config.toml").write_text("clients = 4\n")
    with pytest.raises(FedmiaError, match="not a fedmia run directory"):
        RunDirectory(tmp_path).ensure_fresh(overwrite=True)
    assert (tmp_path / "config.toml").exists()


def test_new_or_empty_directories_are_fine_and_a_file_is_refused(tmp_path):
    RunDirectory(tmp_path / "new").ensure_fresh(overwrite=False)
    RunDirectory(tmp_path).ensure_fresh(overwrite=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(FedmiaError, match="is a file"):
        RunDirectory(tmp_path / "file").ensure_fresh(overwrite=True)


def test_simulate_refuses_a_finished_run_in_one_line_before_loading_anything(run_copy, capsys):
    before = snapshot(run_copy)
    assert main(["simulate", "--clients", "3", "--out", str(run_copy)]) == 2
    err = one_line_error(capsys)
    assert str(run_copy) in err and "--overwrite" in err
    assert snapshot(run_copy) == before
