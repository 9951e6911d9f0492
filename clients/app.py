"""The Flower ClientApp: an honest client that trains with its own local defense.

Each virtual node is one client (its `partition-id`). Flower rebuilds the client every round,
so the defense's state (an accountant, a budget) is kept in `context.state` between rounds;
the run's data is loaded once per Ray actor (`load_prepared_run` caches it). The report says
where the round's time went: `seconds` per part, and under `timing` the worker process and
the wall-clock times the instruction was sent, received and answered (the server derives the
message transfer from them: `fedmia.timing.client_round_seconds`).
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.dp_mod import client_dp_mod
from fedmia.local import report_to_dict, run_local_round
from fedmia.run import load_prepared_run
from fedmia.timing import RunTimer

STATE_KEY = "fedmia"
REPORT_KEY = "report"
UNIT_WEIGHT_KEY = "unit-weight"
IDENTITY_KEY = "identity"
CLIENT_ID_KEY = "client"


def _load_defense_state(context: Context) -> dict[str, Any] | None:
    record = context.state.config_records.get(STATE_KEY)
    return json.loads(str(record["defense"])) if record is not None else None


def _save_defense_state(context: Context, state: dict[str, Any]) -> None:
    context.state.config_records[STATE_KEY] = ConfigRecord({"defense": json.dumps(state)})


def use_assigned_threads() -> None:
    """Ray gives a worker its share of threads through OMP_NUM_THREADS when it assigns it CPUs,
    but a worker that imported torch as it started (`fedmia.simulation.WORKER_MODULES`) has
    sized torch's thread pool for the whole machine already; two such clients on two cores
    would oversubscribe them many times over."""
    threads = os.environ.get("OMP_NUM_THREADS", "")
    if threads.isdigit() and int(threads) != torch.get_num_threads():
        torch.set_num_threads(int(threads))


def train_metrics(client: int, report: dict[str, Any]) -> MetricRecord:
    """The fixed set of numbers FedAvg aggregates; the full report travels as JSON beside it."""
    return MetricRecord({
        "num-examples": int(report["num_examples"]),
        UNIT_WEIGHT_KEY: 1,
        "client": client,
        "train-loss": float(report["train_loss"]),
        "train-accuracy": float(report["train_accuracy"]),
        "stopped": int(report["stopped"]),
    })


class RunClientApp(ClientApp):
    """The ClientApp of one run, pickled as the call that makes it: Flower's Ray backend sends
    the app along with every message, and pickling its handlers by value cost the driver about
    a millisecond per message."""

    def __init__(self, run_dir: str | None) -> None:
        super().__init__(mods=[client_dp_mod])
        self.run_dir = run_dir

    def __reduce__(self) -> tuple[Any, tuple[str | None]]:
        return make_client_app, (self.run_dir,)


def make_client_app(run_dir: str | None = None) -> ClientApp:
    """A ClientApp for the run prepared at `run_dir` (default: the run config's `out`)."""
    app = RunClientApp(run_dir)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        received_at = time.time()
        use_assigned_threads()
        timer = RunTimer()
        with timer.phase("data"):
            run = load_prepared_run(run_dir or str(context.run_config["out"]))
        with timer.phase("rebuild"):
            global_state = msg.content["arrays"].to_torch_state_dict()
        client = int(context.node_config["partition-id"])
        server_round = int(msg.content["config"]["server-round"])
        result = run_local_round(run, client, global_state, server_round, _load_defense_state(context), timer)
        _save_defense_state(context, result.defense_state)
        with timer.phase("pack"):
            arrays = ArrayRecord(result.state)
        report = {**report_to_dict(client, result.report, timer.seconds()),
                  "timing": {"worker": os.getpid(), "sent_at": msg.metadata.created_at,
                             "received_at": received_at, "replied_at": time.time()}}
        content = RecordDict({
            "arrays": arrays,
            "metrics": train_metrics(client, report),
            REPORT_KEY: ConfigRecord({"json": json.dumps(report)}),
        })
        return Message(content=content, reply_to=msg)

    @app.query()
    def identify(msg: Message, context: Context) -> Message:
        """Tell the server which client this node is, so it can sample clients by seed."""
        identity = ConfigRecord({CLIENT_ID_KEY: int(context.node_config["partition-id"])})
        return Message(content=RecordDict({IDENTITY_KEY: identity}), reply_to=msg)

    return app


app = make_client_app()
