"""The Flower ServerApp: FedAvg with the server-side adversary, then the attack phase.

The same app serves `python -m fedmia simulate` (which prepares the run first, to fail fast on
bad input) and `flwr run .` (which prepares it here, from the run config in pyproject.toml).
"""

from __future__ import annotations

import random
from typing import Any

from flwr.app import ArrayRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    Strategy,
)

from fedmia.config import RunConfig, resolve_config
from fedmia.evaluation import evaluate_privacy
from fedmia.progress import Progress, SilentProgress
from fedmia.recorder import RoundRecorder
from fedmia.report import write_outputs
from fedmia.rundir import FINAL_GLOBAL_MODEL
from fedmia.run import PreparedRun, prepare_run
from fedmia.timing import RunTimer
from strategies.observed import ObservedStrategy


def sampled_clients(config: RunConfig) -> int:
    return max(1, int(config.clients * config.fraction))


def build_strategy(config: RunConfig, recorder: RoundRecorder) -> Strategy:
    """FedAvg, inside Flower's client-level DP wrapper if asked, observed by the adversary."""
    strategy: Strategy = FedAvg(
        fraction_train=config.fraction,
        fraction_evaluate=0.0,
        min_train_nodes=sampled_clients(config),
        min_available_nodes=config.clients,
    )
    dp_wrappers = {
        "server-fixed": lambda s: DifferentialPrivacyServerSideFixedClipping(
            s, config.client_dp_noise, config.client_dp_clip, sampled_clients(config)),
        "client-fixed": lambda s: DifferentialPrivacyClientSideFixedClipping(
            s, config.client_dp_noise, config.client_dp_clip, sampled_clients(config)),
        "server-adaptive": lambda s: DifferentialPrivacyServerSideAdaptiveClipping(
            s, config.client_dp_noise, sampled_clients(config), initial_clipping_norm=config.client_dp_clip),
        "client-adaptive": lambda s: DifferentialPrivacyClientSideAdaptiveClipping(
            s, config.client_dp_noise, sampled_clients(config), initial_clipping_norm=config.client_dp_clip),
    }
    if config.client_dp in dp_wrappers:
        strategy = dp_wrappers[config.client_dp](strategy)
    return ObservedStrategy(strategy, recorder)


def execute_run(grid: Grid, run: PreparedRun, progress: Progress, timer: RunTimer) -> dict[str, Any]:
    """Train, attack, report; `timer` gets each phase's seconds."""
    config = run.config
    random.seed(config.seed)
    recorder = RoundRecorder(run, progress.on_round)

    def record_round(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        record = recorder.finish_round(server_round, arrays.to_torch_state_dict())
        return MetricRecord({"test-accuracy": record["test_accuracy"], "test-loss": record["test_loss"]})

    with timer.phase("training"):
        result = build_strategy(config, recorder).start(
            grid=grid,
            initial_arrays=ArrayRecord(run.new_model().state_dict()),
            num_rounds=config.rounds,
            evaluate_fn=record_round,
        )
        run.rundir.save_model(FINAL_GLOBAL_MODEL, result.arrays.to_torch_state_dict())
    progress.on_phase("attacks")
    with timer.phase("attacks"):
        results = evaluate_privacy(run, progress.on_scope)
    return write_outputs(run, results, timer)


def make_server_app(prepared: PreparedRun | None = None, progress: Progress | None = None,
                    timer: RunTimer | None = None) -> ServerApp:
    """A ServerApp for an already prepared run, or one prepared from the Flower run config."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run = prepared or prepare_run(resolve_config(dict(context.run_config), {}))
        execute_run(grid, run, progress or SilentProgress(), timer or RunTimer())

    return app


app = make_server_app()
