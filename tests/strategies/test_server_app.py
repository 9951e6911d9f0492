"""`flwr run`'s path into a run: the run config becomes a prepared run, and an earlier run in
`out` is kept unless the run config says overwrite; the server identifies its clients only once
every node has registered."""

import threading

import pytest
from flwr.app import Context, RecordDict

from fedmia.errors import FedmiaError
from strategies.server_app import RunInterrupted, StoppableGrid, prepare_flower_run


class Nodes:
    """The one thing `prepare_flower_run` asks of Flower's grid: its node ids."""

    def __init__(self, count):
        self.count = count

    def get_node_ids(self):
        return list(range(self.count))


def context(out, **settings):
    run_config = {"clients": 0, "rounds": 1, "out": str(out), **settings}
    return Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config)


def test_clients_follow_the_federation_and_an_earlier_run_needs_overwrite(tmp_path):
    out = tmp_path / "run"
    run = prepare_flower_run(Nodes(3), context(out))
    assert run.config.clients == 3 and (out / "manifest.json").exists()
    with pytest.raises(FedmiaError, match="overwrite"):
        prepare_flower_run(Nodes(3), context(out))
    again = prepare_flower_run(Nodes(4), context(out, overwrite=True))
    assert again.config.clients == 4


class Registering(Nodes):
    """A grid whose nodes register one by one, as Flower's simulation runtime registers them
    while the ServerApp starts."""

    def get_node_ids(self):
        self.count += 1
        return list(range(self.count - 1))


def test_the_server_waits_for_every_node_before_identifying_them():
    grid = Registering(0)
    StoppableGrid(grid, threading.Event()).wait_for_nodes(4)
    assert grid.count == 5, "asked until all 4 nodes were there"
    stop = threading.Event()
    stop.set()
    with pytest.raises(RunInterrupted):
        StoppableGrid(Registering(0), stop).wait_for_nodes(100)


class Missing(Registering):
    """A federation in which one node never registers."""

    def get_node_ids(self):
        self.count += 1
        return [0, 1]


def test_a_node_that_never_registers_is_one_line_error_not_a_hang():
    with pytest.raises(FedmiaError, match="only 2 of 3 clients registered within 0 s"):
        StoppableGrid(Missing(0), threading.Event()).wait_for_nodes(3, timeout_s=0.05)
