"""The Flower ServerApp: FedAvg with the server-side adversary, then the attack phase.

The same app serves `python -m fedmia simulate` (which prepares the run first, to fail fast on
bad input) and `flwr run .` (which prepares it here, from the run config in pyproject.toml).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.supercore.run import Run
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    Strategy,
)

from flwr.supercore.privacy_accounting import (
    NeighboringRelation,
    PrivacyConfig,
    SamplingMethod,
)
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

from clients.app import UNIT_WEIGHT_KEY
from clients.dp_mod import CLIENT_DP_CONFIG_KEY
from fedmia.config import RunConfig, resolve_config
from fedmia.errors import FedmiaError
from fedmia.evaluation import evaluate_privacy, last_client_reports, scope_tasks
from fedmia.inversion.phase import inversion_phase
from fedmia.privacy import default_delta
from fedmia.progress import Progress, SilentProgress
from fedmia.recorder import RoundRecorder
from fedmia.report import write_outputs
from fedmia.rundir import FINAL_GLOBAL_MODEL, RunDirectory
from fedmia.run import PreparedRun, prepare_run
from fedmia.timing import RunTimer
from strategies.observed import ObservedStrategy


class RunInterrupted(Exception):
    """The driver asked the ServerApp to stop (Ctrl-C): ends its thread at the next safe point."""


@dataclass
class ServerControl:
    """How a driver stops the ServerApp it runs in a thread: setting `stop` ends the run at its
    next wait for clients, round or attacked scope; `thread` is the thread it runs in."""

    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None


#: How long the server waits for every client to register before it gives up.
NODE_WAIT_S = 300.0


class StoppableGrid(Grid):
    """`grid`, except that waiting for replies ends with RunInterrupted once `stop` is set.

    Flower's grids wait for every reply (up to an hour); after Ctrl-C the clients are gone, and
    a ServerApp thread left waiting would keep the driver process alive."""

    #: How often to look for replies: the server sees each one at most this long after Flower
    #: stored it (the last one ends the round).
    poll_interval_s = 0.01

    def __init__(self, grid: Grid, stop: threading.Event) -> None:
        self.grid = grid
        self.stop = stop

    def check(self) -> None:
        if self.stop.is_set():
            raise RunInterrupted("stopped by the driver")

    def wait_for_nodes(self, count: int, timeout_s: float = NODE_WAIT_S) -> None:
        """Flower registers the simulation's nodes while the ServerApp starts: wait for `count`,
        and give up with one line after `timeout_s` (a node that never comes must not hang the run)."""
        deadline = time.monotonic() + timeout_s
        while (found := len(list(self.get_node_ids()))) < count:
            self.check()
            if time.monotonic() > deadline:
                raise FedmiaError(f"only {found} of {count} clients registered within {timeout_s:.0f} s; "
                                  "check that every SuperNode (or Ray worker) is running and rerun")
            self.stop.wait(self.poll_interval_s)

    def set_run(self, run: Run) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Run:
        return self.grid.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        self.check()
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        self.check()
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        waiting = set(self.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list[Message] = []
        while waiting and (deadline is None or time.monotonic() < deadline):
            arrived = list(self.pull_messages(waiting))
            replies.extend(arrived)
            waiting -= {reply.metadata.reply_to_message_id for reply in arrived}
            if waiting:
                self.stop.wait(self.poll_interval_s)
        return replies


def seed_global_generators(seed: int) -> None:
    """Seed the process-wide generators that code outside fedmia draws from: Flower's
    client-level DP wrappers add their noise with numpy's global generator."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def sampled_clients(config: RunConfig) -> int:
    return max(1, int(config.clients * config.fraction))


def client_level_accountant(config: RunConfig) -> RdpAccountant | None:
    """Flower's RDP accountant for the fixed-clipping wrappers: every round is one Gaussian
    release over the sampled clients, with no amplification claimed for the sampling."""
    if not config.client_dp.endswith("-fixed") or config.client_dp_noise <= 0:
        return None
    return RdpAccountant(PrivacyConfig(
        target_delta=default_delta(config.clients),
        population_size=config.clients,
        neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
        sampling_method=SamplingMethod.NO_AMPLIFICATION,
    ))


def client_level_privacy(strategy: Strategy, config: RunConfig) -> dict[str, Any] | None:
    """The client-level guarantee of the server's DP wrapper, for results.json."""
    if config.client_dp == "off":
        return None
    row: dict[str, Any] = {"mode": config.client_dp, "noise_multiplier": config.client_dp_noise,
                           "clipping_norm": config.client_dp_clip, "epsilon": None, "delta": None,
                           "accountant": None}
    spent = strategy.privacy_spent() if hasattr(strategy, "privacy_spent") else None
    if spent is None:
        return {**row, "note": "Flower accounts fixed clipping only; adaptive clipping's "
                               "noisy quantile estimate is not accounted, so no epsilon is claimed"}
    return {**row, "epsilon": spent.epsilon, "delta": spent.delta, "releases": spent.num_releases,
            "accountant": f"flower {spent.accounting_method}"}


def wrap_client_dp(config: RunConfig, strategy: Strategy) -> Strategy:
    """`strategy` inside Flower's client-level DP wrapper for `config.client_dp` (if any);
    settings Flower rejects become a one-line FedmiaError."""
    wrappers = {
        "server-fixed": lambda: DifferentialPrivacyServerSideFixedClipping(
            strategy, config.client_dp_noise, config.client_dp_clip, sampled_clients(config),
            accountant=client_level_accountant(config)),
        "client-fixed": lambda: DifferentialPrivacyClientSideFixedClipping(
            strategy, config.client_dp_noise, config.client_dp_clip, sampled_clients(config),
            accountant=client_level_accountant(config)),
        "server-adaptive": lambda: DifferentialPrivacyServerSideAdaptiveClipping(
            strategy, config.client_dp_noise, sampled_clients(config),
            initial_clipping_norm=config.client_dp_clip),
        "client-adaptive": lambda: DifferentialPrivacyClientSideAdaptiveClipping(
            strategy, config.client_dp_noise, sampled_clients(config),
            initial_clipping_norm=config.client_dp_clip),
    }
    if config.client_dp not in wrappers:
        return strategy
    try:
        return wrappers[config.client_dp]()
    except ValueError as error:
        raise FedmiaError(f"--client-dp {config.client_dp} rejected by Flower: {error} "
                          "Adjust --client-dp-noise / --client-dp-clip or --clients") from None


def build_strategy(config: RunConfig, recorder: RoundRecorder) -> ObservedStrategy:
    """FedAvg, inside Flower's client-level DP wrapper if asked, observed by the adversary,
    which samples the round's clients by seed. Client-level DP needs equal client weights, so
    FedAvg then weights every client by 1."""
    fedavg = FedAvg(
        fraction_train=1.0,
        fraction_evaluate=0.0,
        min_train_nodes=config.clients,
        min_available_nodes=config.clients,
        weighted_by_key=UNIT_WEIGHT_KEY if config.client_dp != "off" else "num-examples",
    )
    return ObservedStrategy(wrap_client_dp(config, fedavg), recorder, sampled_clients(config))


def check_federation_size(grid: Grid, config: RunConfig) -> None:
    """One virtual node per client: `partition-id` k is client k."""
    nodes = len(list(grid.get_node_ids()))
    if nodes and nodes != config.clients:
        raise FedmiaError(f"the federation has {nodes} SuperNodes but clients = {config.clients}; "
                          f"run `flwr run . --federation-config \"num-supernodes={config.clients}\"`, "
                          "or leave clients = 0 for one client per SuperNode")


def flower_run_config(grid: Grid, context: Context) -> dict[str, Any]:
    """The run config `flwr run` passes; `clients = 0` (the app's default) means one client per
    SuperNode of the federation, since a ServerApp cannot choose how many SuperNodes it gets."""
    config = dict(context.run_config)
    if config.get("clients") == 0:
        config["clients"] = len(list(grid.get_node_ids()))
    return config


def prepare_flower_run(grid: Grid, context: Context) -> PreparedRun:
    """The run `flwr run` asked for; like `simulate`, it refuses to write over an earlier run in
    `out` unless the run config says `overwrite=true`."""
    settings = flower_run_config(grid, context)
    overwrite = bool(settings.pop("overwrite", False))
    config = resolve_config(settings, {})
    RunDirectory(config.out).ensure_fresh(overwrite)
    return prepare_run(config)


def execute_run(grid: Grid, run: PreparedRun, progress: Progress, timer: RunTimer,
                stop: threading.Event | None = None) -> dict[str, Any]:
    """Train, attack, report; `timer` gets each phase's seconds. Once `stop` is set the run
    ends with RunInterrupted at the next wait for clients, round or attacked scope."""
    config = run.config
    check_federation_size(grid, config)
    seed_global_generators(config.seed)
    stoppable = StoppableGrid(grid, stop or threading.Event())
    recorder = RoundRecorder(run, progress.on_round)

    def record_round(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        stoppable.check()
        record = recorder.finish_round(server_round, arrays.to_torch_state_dict())
        return MetricRecord({"test-accuracy": record["test_accuracy"], "test-loss": record["test_loss"]})

    strategy = build_strategy(config, recorder)
    progress.on_startup(config.clients)
    with timer.phase("client_startup"):
        stoppable.wait_for_nodes(config.clients)
        strategy.client_of_node(stoppable)
    with timer.phase("training"):
        strategy.start(
            grid=stoppable,
            initial_arrays=ArrayRecord(run.new_model().state_dict()),
            num_rounds=config.rounds,
            train_config=ConfigRecord({CLIENT_DP_CONFIG_KEY: config.client_dp}),
            evaluate_fn=record_round,
        )
        run.rundir.save_model(FINAL_GLOBAL_MODEL, recorder.latest_global)

    def on_scope(scope: str) -> None:
        stoppable.check()
        progress.on_scope(scope)

    progress.on_attacks(len(scope_tasks(run, last_client_reports(run))))
    with timer.phase("attacks"):
        results = evaluate_privacy(run, on_scope)
    progress.on_attacks_done()
    results.update(inversion_phase(run, timer, progress, on_scope))
    results["client_level_dp"] = client_level_privacy(strategy.inner, config)
    return write_outputs(run, results, timer)


def make_server_app(prepared: PreparedRun | None = None, progress: Progress | None = None,
                    timer: RunTimer | None = None, control: ServerControl | None = None) -> ServerApp:
    """A ServerApp for an already prepared run, or one prepared from the Flower run config;
    `control` lets the driver stop it."""
    app = ServerApp()
    control = control or ServerControl()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        control.thread = threading.current_thread()
        run = prepared or prepare_flower_run(grid, context)
        execute_run(grid, run, progress or SilentProgress(), timer or RunTimer(), control.stop)

    return app


app = make_server_app()
