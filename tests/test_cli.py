"""The command line: help documents every flag, bad input is one line with exit code 2."""

import gzip
import subprocess
import sys
import warnings

import pytest

from fedmia.cli import build_parser, main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedmia", *args], capture_output=True, text=True,
                          timeout=120)


def test_help_documents_every_flag_with_its_default():
    text = build_parser()._subparsers._group_actions[0].choices["simulate"].format_help()
    for flag in ("--clients", "--rounds", "--dataset", "--model", "--partition", "--local-epochs",
                 "--batch-size", "--lr", "--fraction", "--seed", "--out", "--data-dir", "--device",
                 "--config", "--defense", "--epsilon", "-v"):
        assert flag in text
    assert "(default: 20)" in text and "(default: 5)" in text


@pytest.mark.parametrize("args, message", [
    (["simulate", "--clients", "0"], "--clients"),
    (["simulate", "--clients", "5000"], "5000 clients"),
    (["simulate", "--rounds", "0"], "--rounds"),
    (["simulate", "--dataset", "nope"], "unknown dataset"),
    (["simulate", "--partition", "zipf"], "partition"),
    (["simulate", "--clients", "abc"], "invalid int value"),
    (["simulate", "--config", "/nonexistent.toml"], "not found"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, capsys, tmp_path):
    args = args + ["--out", str(tmp_path / "run")]
    with pytest.raises(SystemExit) as exited:
        code = main(args)
        raise SystemExit(code)
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err


def test_malformed_toml_and_missing_data_through_the_real_entry_point(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("clients = [unclosed\n")
    result = run_cli("simulate", "--config", str(bad))
    assert result.returncode == 2 and "not valid TOML" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    result = run_cli("simulate", "--dataset", "mnist", "--data-dir", str(tmp_path),
                     "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and "mnist" in result.stderr
    assert "Traceback" not in result.stderr


def one_line_exit_2(args: list[str], capfd) -> str:
    """Run the CLI in-process; assert exit 2 and exactly one `fedmia: error:` line, nothing else."""
    assert main(args) == 2
    captured = capfd.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedmia: error: "), captured.err
    assert "Traceback" not in captured.err and not captured.out.strip()
    return lines[0]


def write_toml(tmp_path, text: str) -> str:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("args, message", [
    (["--seed", "-1"], "--seed must be an integer from 0 to 4294967295"),
    (["--rounds", "99999999999999999999"], "--rounds must be an integer from 1 to 1000"),
    (["--clients", "100000000000"], "--clients must be an integer from 1 to 10000"),
    (["--out", ""], "--out"),
    (["--attacks", ""], "--attacks '' has an empty name"),
    (["--attacks", "loss,loss"], "'loss' is listed twice"),
    (["--defense", "dpsgd", "--epsilon", "1,,x"], "--epsilon '1,,x' has an empty value"),
    (["--defense", "dpsgd", "--epsilon", "x"], "epsilon='x' is not a number"),
    (["--clients", "4", "--defense", "dpsgd", "--epsilon", "1,2,3"], "3 values for 4 clients"),
    (["--defense", "dpsgd"], "defense 'dpsgd' needs epsilon; its parameters are epsilon, delta"),
    (["--epsilon", "1"], "add --defense"),
])
def test_bad_flags_fail_before_anything_is_written(args, message, capfd, tmp_path):
    out = tmp_path / "run"
    assert message in one_line_exit_2(["simulate", "--out", str(out), *args], capfd)
    assert not out.exists(), "bad input must be refused before the run starts"


@pytest.mark.parametrize("toml, message", [
    ('clients = 5\n[[client]]\nids = "3-1"\ndefense = "dpsgd"\nepsilon = 1\n', "runs backwards"),
    ('[[client]]\nids = "0-1"\ndefense = "dpsgd"\nepsilon = "abc"\n', "epsilon='abc' is not a number"),
    ('[[client]]\nids = "0-1"\ndefense = "ladp"\nepsilom = 1\n',
     "defense 'ladp' has no parameter 'epsilom'; its parameters are epsilon"),
    ('[[client]]\nids = "0-1"\ndefense = "dpsgd"\n', "defense 'dpsgd' needs epsilon"),
    ('client = 5\n', "[[client]] tables"),
    ('epsilon = "abc"\ndefense = "dpsgd"\n', "epsilon='abc' is not a number"),
    ('rounds = "5"\n', "--rounds must be an integer"),
    ('attacks = 3\n', "attacks in the config file must list"),
])
def test_bad_config_file_values_are_one_line(toml, message, capfd, tmp_path):
    args = ["simulate", "--config", write_toml(tmp_path, toml), "--out", str(tmp_path / "run")]
    assert message in one_line_exit_2(args, capfd)


def test_config_pointing_to_a_directory_is_one_line(capfd, tmp_path):
    assert "is a directory" in one_line_exit_2(["simulate", "--config", str(tmp_path)], capfd)


def test_an_explicit_data_dir_that_does_not_exist_is_an_error(capfd, tmp_path):
    """It used to fall back silently to $FEDMIA_DATA and the system folders."""
    missing = tmp_path / "nonexistent"
    err = one_line_exit_2(["simulate", "--dataset", "fashion-mnist", "--data-dir", str(missing),
                           "--out", str(tmp_path / "run")], capfd)
    assert f"--data-dir {missing} is not an existing folder" in err


@pytest.mark.parametrize("content, message", [
    (b"\x00garbage that is not gzip" * 8, "cannot read"),
    (gzip.compress(b"\x00garbage inside a valid gzip stream" * 8), "is not an IDX file"),
])
def test_garbage_gz_idx_files_are_one_line(content, message, capfd, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (data / f"{stem}.gz").write_bytes(content)
    err = one_line_exit_2(["simulate", "--dataset", "mnist", "--data-dir", str(data),
                           "--out", str(tmp_path / "run")], capfd)
    assert message in err and str(data) in err


def test_impossible_dirichlet_partition_is_exactly_one_line_and_no_warning(capfd, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        err = one_line_exit_2(["simulate", "--clients", "20", "--partition", "dirichlet:0.01",
                               "--out", str(tmp_path / "run")], capfd)
    assert "cannot partition with dirichlet:0.01" in err
    assert [str(w.message) for w in caught if "flwr_datasets" in w.filename] == []


def test_real_entry_point_prints_one_line_for_bad_values(tmp_path):
    result = run_cli("simulate", "--seed", "-1", "--out", str(tmp_path / "run"))
    assert result.returncode == 2 and result.stderr.startswith("fedmia: error: --seed")
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
