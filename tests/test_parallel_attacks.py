"""The attack phase over worker processes gives the serial phase's results, bit for bit, and
its errors and stops: a real in-process federation attacked with 1 and with 2 workers."""

import multiprocessing
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from fedmia.config import resolve_config
from fedmia.errors import FedmiaError
from fedmia import evaluation
from fedmia.evaluation import GLOBAL_SCOPE, ScopeResult, client_scope, evaluate_privacy
from fedmia.rundir import RunDirectory
from fedmia.run import PreparedRun
from fedmia.timing import without_timings
from tests.inprocess import train_federation

CLIENTS = 6


class Stop(Exception):
    """What a progress callback raises to stop the phase (the ServerApp's RunInterrupted)."""


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> PreparedRun:
    """A trained federation; client 0 trains with DP-SGD, so its scope has a delta of its own."""
    out = tmp_path_factory.mktemp("runs") / "parallel"
    config = resolve_config({}, {"clients": CLIENTS, "rounds": 1, "local_epochs": 1, "seed": 5,
                                 "out": str(out), "attacks": ("loss", "entropy")},
                            "dpsgd", {"epsilon": "8,inf,inf,inf,inf,inf"})
    return train_federation(config)


def copied(run: PreparedRun, path) -> PreparedRun:
    """`run` in a copy of its directory, so each attack writes score files of its own."""
    shutil.copytree(run.rundir.path, path)
    return replace(run, config=replace(run.config, out=str(path)), rundir=RunDirectory(path))


def saved_scores(run: PreparedRun) -> dict[str, dict[str, np.ndarray]]:
    return {path.name: dict(np.load(path)) for path in sorted((run.rundir.path / "scores").glob("*.npz"))}


def attack_and_mark(path: str, config, task) -> ScopeResult:
    """`_attack_in_worker`, leaving a mark beside the run directory: proof that a worker, not
    the driver, attacked `task`'s scope."""
    (Path(path).parent / f"worker-{task.scope.replace(':', '-')}").touch()
    return evaluation._attack_in_worker(path, config, task)


def worker_marks(run: PreparedRun) -> list[Path]:
    return sorted(run.rundir.path.parent.glob("worker-*"))


def slow_driver(run: PreparedRun, started: list[str]) -> Callable[[str], None]:
    """A progress callback that holds the driver for a second at each scope it starts, until
    a worker has attacked one: the driver attacks scopes itself while the workers start, and
    on this tiny run it would otherwise finish them all first."""
    def on_scope(scope: str) -> None:
        started.append(scope)
        if not worker_marks(run):
            time.sleep(1.0)
    return on_scope


def test_two_workers_give_the_serial_results_and_score_files(trained, tmp_path, monkeypatch):
    threads = torch.get_num_threads()
    serial_run = copied(trained, tmp_path / "serial" / "run")
    parallel_run = copied(trained, tmp_path / "parallel" / "run")
    serial = evaluate_privacy(serial_run, workers=1)
    assert torch.get_num_threads() == threads, "the serial path restores torch's thread count"
    monkeypatch.setattr(evaluation, "_attack_in_worker", attack_and_mark)
    started: list[str] = []
    parallel = evaluate_privacy(parallel_run, slow_driver(parallel_run, started), workers=2)
    assert worker_marks(parallel_run), "a worker attacked at least one scope"
    assert without_timings(parallel) == without_timings(serial)
    assert [row["client"] for row in parallel["clients"]] == list(range(CLIENTS))
    assert sorted(started) == sorted([GLOBAL_SCOPE, *map(client_scope, range(CLIENTS))])
    serial_files, parallel_files = saved_scores(serial_run), saved_scores(parallel_run)
    assert serial_files.keys() == parallel_files.keys() and len(serial_files) == 2 * (CLIENTS + 1)
    for name, arrays in serial_files.items():
        for key, values in arrays.items():
            np.testing.assert_array_equal(values, parallel_files[name][key], err_msg=f"{name}: {key}")


def test_a_workers_error_reaches_the_driver_with_its_type_and_message(trained, tmp_path):
    """A worker loads the run from its directory, whose config.toml here has a bad learning
    rate: the worker's FedmiaError reaches the driver, which holds the run in memory and
    would not fail by itself."""
    run = copied(trained, tmp_path / "broken" / "run")
    config_file = run.rundir.path / "config.toml"
    config_file.write_text(re.sub(r"(?m)^lr = .*$", "lr = -1.0", config_file.read_text()))
    with pytest.raises(FedmiaError, match="--lr must be a positive number, got -1.0"):
        evaluate_privacy(run, slow_driver(run, []), workers=2)
    assert not multiprocessing.active_children()


def test_a_callback_that_raises_stops_the_workers_at_once(trained, tmp_path):
    """Ctrl-C in `simulate` makes the progress callback raise: the phase stops without waiting
    for the scopes in progress, and no worker is left running."""
    run = copied(trained, tmp_path / "stopped")
    started: list[str] = []

    def stop_at_third(scope: str) -> None:
        started.append(scope)
        if len(started) == 3:
            raise Stop(scope)

    begun = time.monotonic()
    with pytest.raises(Stop):
        evaluate_privacy(run, stop_at_third, workers=2)
    assert time.monotonic() - begun < 30
    deadline = time.monotonic() + 5
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not multiprocessing.active_children()
    assert len(started) == 3
