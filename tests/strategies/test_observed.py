"""The observed strategy: the adversary sees every update; bad or stopped updates are left out."""

import json

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MessageType, RecordDict
from flwr.serverapp.strategy import FedAvg

from clients.app import REPORT_KEY, train_metrics
from fedmia.config import RunConfig
from fedmia.errors import FedmiaError
from fedmia.recorder import RoundRecorder, check_update
from fedmia.run import prepare_run
from strategies.observed import ObservedStrategy, last_line


pytestmark = pytest.mark.usefixtures("flower_task_identity")


@pytest.fixture
def run(tmp_path):
    return prepare_run(RunConfig(clients=3, rounds=1, out=str(tmp_path / "run")))


def reply(state: dict, client: int, stopped: bool = False) -> Message:
    request = Message(RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=1,
                      message_type=MessageType.TRAIN)
    report = {"client": client, "num_examples": 10, "train_loss": 0.5, "train_accuracy": 0.9,
              "stopped": stopped}
    content = RecordDict({"arrays": ArrayRecord(state), "metrics": train_metrics(client, report),
                          REPORT_KEY: ConfigRecord({"json": json.dumps(report)})})
    return Message(content, reply_to=request)


def shifted(state: dict, value: float) -> dict:
    return {k: (v + value if v.is_floating_point() else v) for k, v in state.items()}


def test_check_update_rejects_wrong_shapes_keys_and_non_finite_values(run):
    reference = run.new_model().state_dict()
    check_update(reference, reference)
    name = next(k for k, v in reference.items() if v.is_floating_point())
    with pytest.raises(FedmiaError, match="shape"):
        check_update(reference, {**reference, name: torch.zeros(3)})
    with pytest.raises(FedmiaError, match="missing"):
        check_update(reference, {k: v for k, v in reference.items() if k != name})
    with pytest.raises(FedmiaError, match="non-finite"):
        check_update(reference, {**reference, name: torch.full_like(reference[name], float("nan"))})


def test_malicious_and_stopped_updates_are_seen_but_not_aggregated(run):
    recorder = RoundRecorder(run)
    strategy = ObservedStrategy(FedAvg(), recorder, 3)
    base = run.new_model().state_dict()
    name = next(k for k, v in base.items() if v.is_floating_point())
    poisoned = {**base, name: torch.full_like(base[name], float("inf"))}
    arrays, _ = strategy.aggregate_train(1, [
        reply(shifted(base, 1.0), 0), reply(poisoned, 1), reply(shifted(base, 5.0), 2, stopped=True)])
    aggregated = arrays.to_torch_state_dict()
    assert torch.allclose(aggregated[name], base[name] + 1.0)
    record = recorder.finish_round(1, aggregated)
    assert [c["client"] for c in record["clients"]] == [0, 2]
    assert len(record["problems"]) == 1 and "non-finite" in record["problems"][0]["reason"]
    assert run.rundir.has_model("client_000") and not run.rundir.has_model("client_001")
    assert not run.rundir.has_model("client_002")


def test_a_round_with_no_usable_update_keeps_the_global_model(run):
    recorder = RoundRecorder(run)
    strategy = ObservedStrategy(FedAvg(), recorder, 3)
    base = run.new_model().state_dict()
    arrays, metrics = strategy.aggregate_train(1, [reply(base, 0, stopped=True)])
    assert arrays is None and metrics is None
    record = recorder.finish_round(1, base)
    assert "global model kept" in record["problems"][0]["reason"]
    assert np.isfinite(record["test_accuracy"])


def test_a_failed_client_is_reported_in_one_line_and_the_round_goes_on(run):
    recorder = RoundRecorder(run)
    strategy = ObservedStrategy(FedAvg(), recorder, 3)
    base = run.new_model().state_dict()
    request = Message(RecordDict({"config": ConfigRecord({"server-round": 1})}), dst_node_id=1,
                      message_type=MessageType.TRAIN)
    failed = Message(Error(code=0, reason="Traceback (most recent call last):\n  File x\nValueError: boom'>"),
                     reply_to=request)
    arrays, _ = strategy.aggregate_train(1, [failed, reply(base, 0)])
    assert arrays is not None
    problem = recorder.finish_round(1, arrays.to_torch_state_dict())["problems"][0]
    assert problem["reason"].endswith("failed: ValueError: boom")
    assert last_line("") == "unknown error"
