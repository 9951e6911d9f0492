"""Faults of a real run: Ctrl-C, stale Ray settings, and a round in which every update is
rejected. Each run is a subprocess in its own session, so the test sees exactly the processes
that run started (Ray's among them) and sends Ctrl-C the way a terminal does: to the group."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

pytestmark = pytest.mark.e2e

PROJECT = Path(__file__).resolve().parents[2]
INTERRUPTED_LINE = "fedmia: interrupted; finished rounds are kept in the run directory"


def start_run(out: Path, *flags: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fedmia", "simulate", "--clients", "3", "--attacks", "loss",
         "--out", str(out), *flags],
        cwd=PROJECT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, env={**os.environ, **(env or {})})


def session_processes(session: int) -> list[str]:
    """Live processes of `session` (a run started with start_new_session has its pid as id)."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:80]
        except (OSError, IndexError):
            continue
        if int(fields[3]) == session and fields[0] not in ("Z", "X"):
            found.append(command)
    return found


def read_until(proc: subprocess.Popen, text: str) -> None:
    for line in proc.stderr:
        if text in line:
            return
    raise AssertionError(f"the run ended before printing {text!r}")


@pytest.mark.parametrize("after, delay_s, presses, kept_rounds", [
    ("starting 3 clients", 1.0, 1, 0),   # the client workers starting
    ("round 1/", 0.0, 2, 2),   # round 2: clients training; an impatient second Ctrl-C
])
def test_ctrl_c_exits_130_quickly_with_one_line_and_no_ray_process(tmp_path, after, delay_s, presses,
                                                                   kept_rounds):
    out = tmp_path / "run"
    proc = start_run(out, "--rounds", "3", "--local-epochs", "30")
    try:
        read_until(proc, after)
        time.sleep(delay_s)
        assert session_processes(proc.pid), "the run is still going"
        pressed = time.monotonic()
        for _ in range(presses):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT)
            time.sleep(0.5)
        _, err = proc.communicate(timeout=10)
        took = time.monotonic() - pressed
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130
    assert err.splitlines() == [INTERRUPTED_LINE], err[-3000:]
    assert took < 10
    assert session_processes(proc.pid) == []
    rounds = [json.loads(line)["round"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rounds == list(range(kept_rounds))


def test_every_update_rejected_keeps_the_model_and_ignores_a_stale_ray_address(tmp_path):
    """--lr 1e6 makes every upload non-finite. RAY_ADDRESS names a Ray that is not there (as
    one left behind would): the run must start its own."""
    out = tmp_path / "run"
    proc = start_run(out, "--clients", "2", "--rounds", "1", "--local-epochs", "1", "--lr", "1e6",
                     env={"RAY_ADDRESS": "127.0.0.1:1"})
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert [row["trained"] for row in results["clients"]] == [False, False]
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert [p["client"] for p in last["problems"]] == [0, 1, None]
    assert all("non-finite" in p["reason"] for p in last["problems"][:2])
    assert last["problems"][2]["reason"] == "no usable update: global model kept"
    initial = load_file(out / "models" / "global_round_000.safetensors")
    final = load_file(out / "models" / "global_final.safetensors")
    assert all((initial[name] == final[name]).all() for name in initial)
    assert session_processes(proc.pid) == []
