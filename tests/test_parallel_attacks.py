"""The attack phase over worker processes gives the serial phase's results, bit for bit, and
its errors and stops: a real in-process federation attacked with 1 and with 2 workers."""

import copy
import multiprocessing
import shutil
import time
from dataclasses import replace

import numpy as np
import pytest
import torch

from fedmia.config import resolve_config
from fedmia.errors import FedmiaError
from fedmia.evaluation import GLOBAL_SCOPE, client_scope, evaluate_privacy
from fedmia.rundir import RunDirectory
from fedmia.run import PreparedRun
from tests.inprocess import train_federation

CLIENTS = 4


class Stop(Exception):
    """What a progress callback raises to stop the phase (the ServerApp's RunInterrupted)."""


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> PreparedRun:
    """A trained 4-client federation; client 0 trains with DP-SGD, so its scope has a delta of
    its own."""
    out = tmp_path_factory.mktemp("runs") / "parallel"
    config = resolve_config({}, {"clients": CLIENTS, "rounds": 1, "local_epochs": 1, "seed": 5,
                                 "out": str(out), "attacks": ("loss", "entropy")},
                            "dpsgd", {"epsilon": "8,inf,inf,inf"})
    return train_federation(config)


def copied(run: PreparedRun, path) -> PreparedRun:
    """`run` in a copy of its directory, so each attack writes score files of its own."""
    shutil.copytree(run.rundir.path, path)
    return replace(run, config=replace(run.config, out=str(path)), rundir=RunDirectory(path))


def saved_scores(run: PreparedRun) -> dict[str, dict[str, np.ndarray]]:
    return {path.name: dict(np.load(path)) for path in sorted((run.rundir.path / "scores").glob("*.npz"))}


def test_two_workers_give_the_serial_results_and_score_files(trained, tmp_path):
    threads = torch.get_num_threads()
    serial_run, parallel_run = copied(trained, tmp_path / "serial"), copied(trained, tmp_path / "parallel")
    serial = evaluate_privacy(serial_run, workers=1)
    assert torch.get_num_threads() == threads, "the serial path restores torch's thread count"
    started: list[str] = []
    parallel = evaluate_privacy(parallel_run, started.append, workers=2)
    assert parallel == serial
    assert [row["client"] for row in parallel["clients"]] == list(range(CLIENTS))
    assert sorted(started) == sorted([GLOBAL_SCOPE, *map(client_scope, range(CLIENTS))])
    serial_files, parallel_files = saved_scores(serial_run), saved_scores(parallel_run)
    assert serial_files.keys() == parallel_files.keys() and len(serial_files) == 2 * (CLIENTS + 1)
    for name, arrays in serial_files.items():
        for key, values in arrays.items():
            np.testing.assert_array_equal(values, parallel_files[name][key], err_msg=f"{name}: {key}")


def test_a_workers_error_reaches_the_driver_with_its_type_and_message(trained, tmp_path):
    """An attack the registry does not know fails inside the scope (make_attack), in the
    worker; the driver raises the same FedmiaError as the serial phase."""
    run = copied(trained, tmp_path / "broken")
    config = copy.copy(run.config)
    object.__setattr__(config, "attacks", ("loss", "no-such-attack"))
    run = replace(run, config=config)
    messages = []
    for workers in (1, 2):
        with pytest.raises(FedmiaError, match="unknown attack 'no-such-attack'") as raised:
            evaluate_privacy(run, workers=workers)
        messages.append(str(raised.value))
    assert messages[0] == messages[1]
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
