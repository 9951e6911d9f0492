"""What the honest-but-curious server sees, written down as it happens.

The server-side adversary observes every client upload (saved as that client's latest model,
and per round as far as the `keep_uploads` policy keeps them, for trajectory attacks)
and every client report; after each round the recorder evaluates the new global model on the
test pool, saves it, and appends one line to metrics.jsonl, so a run killed mid-way keeps
every finished round. Each line's `seconds` split the round's wall time (see `round_seconds`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from fedmia.errors import FedmiaError
from fedmia.adversary.uploads import KeepPolicy
from fedmia.rundir import client_model_name, global_round_name, upload_name
from fedmia.run import PreparedRun
from fedmia.timing import RunTimer
from fedmia.training import predict_logits


@dataclass(frozen=True)
class RoundSummary:
    """What a progress display needs after each round."""

    server_round: int
    total_rounds: int
    test_accuracy: float
    elapsed: float


def check_update(reference: dict[str, torch.Tensor], update: dict[str, torch.Tensor]) -> None:
    """Reject an upload that is not a model of the run's architecture with finite weights:
    a malicious or broken client must not poison the aggregate or crash the server."""
    if set(update) != set(reference):
        missing = sorted(set(reference) - set(update))[:3]
        extra = sorted(set(update) - set(reference))[:3]
        raise FedmiaError(f"update has wrong tensors (missing {missing}, unexpected {extra})")
    for name, tensor in update.items():
        if tuple(tensor.shape) != tuple(reference[name].shape):
            raise FedmiaError(f"update tensor {name} has shape {tuple(tensor.shape)}, "
                              f"expected {tuple(reference[name].shape)}")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise FedmiaError(f"update tensor {name} has non-finite values")


def evaluate_on(model: nn.Module, images: np.ndarray, labels: np.ndarray, device: str) -> dict[str, float]:
    logits = torch.as_tensor(predict_logits(model, images, device))
    targets = torch.as_tensor(labels)
    return {"accuracy": float((logits.argmax(1) == targets).double().mean()),
            "loss": float(nn.functional.cross_entropy(logits, targets))}


def problem_order(problem: dict[str, Any]) -> tuple[bool, int, str]:
    """Clients in id order, then problems of no known client: replies arrive in any order,
    and a run must write the same file every time."""
    return problem["client"] is None, problem["client"] or 0, problem["reason"]


class RoundRecorder:
    """Collects one round's uploads and reports; writes the round when it is finished.

    `latest_global` is the last global model written: the run's final model even when the
    last rounds had no usable update (every one rejected) and kept the model before them."""

    def __init__(self, run: PreparedRun, on_round: Callable[[RoundSummary], None] | None = None):
        self.run = run
        self.on_round = on_round
        self.started = time.perf_counter()
        self.reference = run.new_model().state_dict()
        self.latest_global = self.reference
        self.test_images = run.images(run.split.test)
        self.test_labels = run.labels(run.split.test)
        self.keep = KeepPolicy.parse(run.config.keep_uploads)
        self._reports: list[dict[str, Any]] = []
        self._problems: list[dict[str, Any]] = []
        self._round_started = time.time()
        self._first_upload_at: float | None = None
        self._timer = RunTimer()

    def observe_update(self, server_round: int, client: int, state: dict[str, torch.Tensor],
                       report: dict[str, Any]) -> bool:
        """Record one upload; returns False (and records why) when it must be left out."""
        if self._first_upload_at is None:
            self._first_upload_at = time.time()
        try:
            check_update(self.reference, state)
        except FedmiaError as error:
            self.record_problem(server_round, client, f"rejected: {error}")
            return False
        self._reports.append(report)
        if not report.get("stopped"):
            with self._timer.phase("save"):
                self.run.rundir.save_model(client_model_name(client), state)
                if self.keep.keeps(server_round):
                    self.run.rundir.save_model(upload_name(client, server_round), state)
        return True

    def record_problem(self, server_round: int, client: int | None, reason: str) -> None:
        self._problems.append({"round": server_round, "client": client, "reason": reason})

    def finish_round(self, server_round: int, global_state: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Evaluate and save the global model, append the round's line to metrics.jsonl."""
        aggregated_at, uploads_saved = time.time(), self._timer.seconds().get("save", 0.0)
        with self._timer.phase("evaluation"):
            model = self.run.model_from_state(global_state)
            test = evaluate_on(model, self.test_images, self.test_labels, self.run.config.device)
        with self._timer.phase("save"):
            self.run.rundir.save_model(global_round_name(server_round), global_state)
        self.latest_global = global_state
        elapsed = time.perf_counter() - self.started
        record = {
            "round": server_round,
            "test_accuracy": test["accuracy"],
            "test_loss": test["loss"],
            "elapsed_s": elapsed,
            "clients": sorted(self._reports, key=lambda r: r["client"]),
            "problems": sorted(self._problems, key=problem_order),
            "seconds": self.round_seconds(aggregated_at, uploads_saved),
        }
        self.run.rundir.append_metrics(record)
        self._reports, self._problems = [], []
        self._round_started, self._first_upload_at, self._timer = time.time(), None, RunTimer()
        if self.on_round:
            self.on_round(RoundSummary(server_round, self.run.config.rounds, test["accuracy"], elapsed))
        return record

    def round_seconds(self, aggregated_at: float, uploads_saved: float) -> dict[str, float]:
        """The round's wall time since the last one ended ("round"), split into: "configure"
        (until the first instruction was sent), "dispatch" (until the first reply was seen,
        which is after the last arrived), "aggregate" (checking and averaging the uploads),
        "evaluation" (the new global model on the test pool) and "save" (model files;
        `uploads_saved` of them before aggregation ended). The first three need the clients'
        `timing` and are left out of a round without them."""
        seconds = {"round": time.time() - self._round_started, **self._timer.seconds()}
        sent = [r["timing"]["sent_at"] for r in self._reports if "timing" in r]
        if sent and self._first_upload_at is not None:
            seconds.update(configure=min(sent) - self._round_started,
                           dispatch=self._first_upload_at - min(sent),
                           aggregate=aggregated_at - self._first_upload_at - uploads_saved)
        return seconds
