"""Simulation wiring checked without starting Ray: resources are refused before Ray starts;
the processes and threads an interrupted run must end are found."""

import os
import subprocess
import sys
import threading
import time

import pytest
import torch

from fedmia.cli import main
from fedmia.config import RunConfig
from fedmia.errors import FedmiaError
from fedmia.simulation import busy_threads, check_resources, descendant_processes

CPUS = os.cpu_count() or 1
GPUS = torch.cuda.device_count()


@pytest.mark.parametrize("flags, message", [
    (["--client-cpus", str(CPUS + 1)], f"more than this machine's {CPUS} CPUs"),
    pytest.param(["--client-gpus", "0.5"], "GPUs; use --client-gpus 0",
                 marks=pytest.mark.skipif(GPUS > 0, reason="this machine has a GPU")),
    pytest.param(["--device", "cuda"], "needs a CUDA GPU and torch sees none",
                 marks=pytest.mark.skipif(GPUS > 0, reason="this machine has a GPU")),
    (["--device", f"cuda:{GPUS}"], "needs a CUDA GPU"),
])
def test_resources_this_machine_lacks_are_one_line_before_ray_starts(flags, message, capsys, tmp_path):
    """Ray would wait for ever for actors no node can hold ("ActorPool is empty")."""
    out = tmp_path / "run"
    started = time.monotonic()
    assert main(["simulate", "--clients", "2", "--rounds", "1", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith("fedmia: error:")
    assert not out.exists(), "refused before the run directory is written"
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("changes, cpus, gpus, message", [
    ({"client_cpus": 2.5}, 2, 0, "at most --client-cpus 2"),
    ({"client_gpus": 1.5, "device": "cuda"}, 4, 1, "at most --client-gpus 1"),
    ({"device": "cuda:1"}, 4, 1, "or cuda:0..cuda:0"),
    ({"device": "cudax"}, 4, 1, "cpu or cuda[:N]"),
])
def test_resource_limits_on_machines_with_gpus(changes, cpus, gpus, message):
    with pytest.raises(FedmiaError, match=message.replace("[", r"\[").replace(".", r"\.")):
        check_resources(RunConfig(**changes), cpus, gpus)


def test_resources_a_machine_has_are_accepted():
    check_resources(RunConfig(client_cpus=2, client_gpus=0.5, device="cuda:1"), 2, 2)
    check_resources(RunConfig(), 1, 0)


def test_descendant_processes_are_found_with_their_start_times():
    child = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time; "
                              "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); "
                              "time.sleep(30)"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(descendant_processes()) < 2:
        time.sleep(0.05)
    found = descendant_processes()
    for pid in found:
        os.kill(pid, 9)
    child.wait()
    assert child.pid in found and len(found) == 2, "the child and its own child"
    assert all(start.isdigit() for start in found.values())


def test_busy_threads_are_the_ones_the_interpreter_waits_for():
    release = threading.Event()
    worker = threading.Thread(target=release.wait)
    helper = threading.Thread(target=release.wait, daemon=True)
    worker.start(), helper.start()
    try:
        assert worker in busy_threads() and helper not in busy_threads()
    finally:
        release.set()
        worker.join()
