"""The README's `flwr run` commands, run as written: a fresh Flower home, the pinned Flower's
local SuperLink (started by `flwr` itself), one client per SuperNode. Offline; slow (Flower
installs the app into its own environment and starts Ray for the run)."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

PROJECT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def flower_processes(home: Path) -> list[int]:
    """Processes of this test's Flower home: `flwr` leaves its SuperLink (and SuperExec)
    running in sessions of their own, with FLWR_HOME in their environment."""
    marker = f"FLWR_HOME={home}".encode()
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def stop_flower(home: Path) -> list[int]:
    """Stop them; the ones still there after 10 s."""
    for pid in flower_processes(home):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while flower_processes(home) and time.monotonic() < deadline:
        time.sleep(0.2)
    return flower_processes(home)


@pytest.mark.skipif(shutil.which("flower-superlink", path=str(VENV_BIN)) is None,
                    reason="flwr's SuperLink is not installed next to this Python")
def test_documented_flwr_run_writes_a_run_directory(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    flwr_home = home / ".flwr"
    env = {**os.environ, "HOME": str(home), "FLWR_HOME": str(flwr_home),
           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", "COLUMNS": "200"}
    out = tmp_path / "run"
    command = ["flwr", "run", ".", "--run-config", f"rounds=1 local-epochs=1 out='{out}'",
               "--federation-config", "num-supernodes=2", "--stream"]
    try:
        result = subprocess.run(command, cwd=PROJECT, env=env, capture_output=True, text=True,
                                timeout=540)
    finally:
        left = stop_flower(flwr_home)
    assert left == []
    log = result.stdout + result.stderr
    assert "Successfully started run" in log, log[-3000:]
    assert (out / "results.json").exists(), log[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["run"]["clients"] == 2 and len(results["clients"]) == 2
    assert "FedmiaError" not in log
