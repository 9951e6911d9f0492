"""Simulation wiring: the fedmia apps on Flower's simulation runtime with Ray-backed clients.

With `fedmia.cli`, the only core module that imports Flower. The run is prepared (data loaded
and checked, split made, run directory written) before Ray starts, so bad input fails fast.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from fedmia.config import RunConfig
from fedmia.progress import TerminalProgress
from fedmia.run import prepare_run
from fedmia.timing import RunTimer


def quiet_logs(verbose: bool) -> None:
    """Flower logs every message exchange; keep only errors unless -v."""
    level = logging.DEBUG if verbose else logging.ERROR
    logging.getLogger("flwr").setLevel(level)
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


def start_ray(config: RunConfig, verbose: bool) -> None:
    import ray

    if ray.is_initialized():
        return
    pythonpath = os.pathsep.join(p for p in sys.path if p)
    ray.init(
        num_cpus=os.cpu_count(),
        num_gpus=1 if config.device.startswith("cuda") else 0,
        include_dashboard=False,
        log_to_driver=verbose,
        logging_level=logging.INFO if verbose else logging.ERROR,
        runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
    )


def backend_config(config: RunConfig) -> dict[str, Any]:
    """Resources per client actor: a CPU each, and a GPU fraction on CUDA runs."""
    return {"client_resources": {"num_cpus": config.client_cpus, "num_gpus": config.client_gpus}}


def simulate(config: RunConfig, verbose: bool = False) -> dict[str, Any]:
    """Run the whole federation, its attacks and report; returns results.json's content."""
    from flwr.simulation import run_simulation

    from clients.app import make_client_app
    from flwr.serverapp.strategy import FedAvg

    from strategies.server_app import make_server_app, wrap_client_dp

    import ray

    timer = RunTimer()
    wrap_client_dp(config, FedAvg())
    run = prepare_run(config)
    quiet_logs(verbose)
    progress = TerminalProgress(config.rounds, 1 + config.clients)
    try:
        with timer.phase("ray_startup"):
            start_ray(config, verbose)
        run_simulation(
            server_app=make_server_app(run, progress, timer),
            client_app=make_client_app(str(run.rundir.path)),
            num_supernodes=config.clients,
            backend_config=backend_config(config),
            verbose_logging=verbose,
        )
    except KeyboardInterrupt:
        logging.disable(logging.CRITICAL)
        raise
    finally:
        progress.close()
        ray.shutdown()
    return run.rundir.read_json("results.json")
