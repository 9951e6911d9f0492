"""A real federation without Ray, for fast tests of the attack phase and the report.

Every client trains with `fedmia.local.run_local_round` (what the ClientApp runs), the server's
`RoundRecorder` sees every upload and writes each round, and the aggregate is FedAvg's
example-weighted mean of the uploads it accepts. Only Flower's transport is left out.
"""

from __future__ import annotations

from typing import Any

import torch

from fedmia.config import RunConfig
from fedmia.evaluation import evaluate_privacy
from fedmia.local import report_to_dict, run_local_round
from fedmia.recorder import RoundRecorder
from fedmia.report import write_outputs
from fedmia.rundir import FINAL_GLOBAL_MODEL
from fedmia.run import PreparedRun, prepare_run
from fedmia.timing import RunTimer


def weighted_mean(states: list[dict[str, torch.Tensor]], weights: list[int]) -> dict[str, torch.Tensor]:
    total = float(sum(weights))
    return {name: sum(state[name].double() * (w / total) for state, w in zip(states, weights)).to(tensor.dtype)
            for name, tensor in states[0].items()}


def train_federation(config: RunConfig) -> PreparedRun:
    """Prepare the run and train every round; the run directory then holds what a real run's
    training phase leaves (models, metrics.jsonl)."""
    run = prepare_run(config)
    recorder = RoundRecorder(run)
    global_state = run.new_model().state_dict()
    recorder.finish_round(0, global_state)
    defense_states: dict[int, Any] = {}
    for server_round in range(1, config.rounds + 1):
        uploads, weights = [], []
        for client in range(config.clients):
            result = run_local_round(run, client, global_state, server_round, defense_states.get(client))
            defense_states[client] = result.defense_state
            report = report_to_dict(client, result.report)
            accepted = recorder.observe_update(server_round, client, result.state, report)
            if accepted and not report["stopped"]:
                uploads.append(result.state)
                weights.append(report["num_examples"])
        global_state = weighted_mean(uploads, weights)
        recorder.finish_round(server_round, global_state)
    run.rundir.save_model(FINAL_GLOBAL_MODEL, global_state)
    return run


def federate_and_attack(config: RunConfig) -> tuple[PreparedRun, dict[str, Any]]:
    """Train, attack and report, in this process; returns the run and its results."""
    run = train_federation(config)
    timer = RunTimer()
    with timer.phase("attacks"):
        evaluation = evaluate_privacy(run)
    return run, write_outputs(run, {**evaluation, "client_level_dp": None}, timer)
