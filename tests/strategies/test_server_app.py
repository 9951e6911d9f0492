"""`flwr run`'s path into a run: the run config becomes a prepared run, and an earlier run in
`out` is kept unless the run config says overwrite."""

import pytest
from flwr.app import Context, RecordDict

from fedmia.errors import FedmiaError
from strategies.server_app import prepare_flower_run


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
