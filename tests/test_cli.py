"""The command line: help documents every flag, bad input is one line with exit code 2."""

import subprocess
import sys

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
