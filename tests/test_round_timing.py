"""Where a training round's time goes, measured: the ClientApp times its parts and stamps the
message's journey, the server's recorder splits each round, and `fedmia.timing` turns both into
means per client round and per server round."""

import json
import os

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from clients.app import REPORT_KEY, make_client_app
from fedmia.config import RunConfig
from fedmia.local import run_local_round
from fedmia.recorder import RoundRecorder
from fedmia.run import prepare_run
from fedmia.timing import RunTimer, client_round_seconds, server_round_seconds, without_timings

PARTS = ("data", "rebuild", "compute", "pack")


pytestmark = pytest.mark.usefixtures("flower_task_identity")


@pytest.fixture
def run(tmp_path):
    return prepare_run(RunConfig(clients=2, rounds=1, out=str(tmp_path / "run")))


def train_reply(run, client: int) -> tuple[Message, Message]:
    """The ClientApp's answer to a real round-1 instruction, with the instruction."""
    instruction = Message(RecordDict({"arrays": ArrayRecord(run.new_model().state_dict()),
                                      "config": ConfigRecord({"server-round": 1})}),
                          dst_node_id=client + 1, message_type=MessageType.TRAIN)
    context = Context(run_id=1, node_id=client + 1, node_config={"partition-id": client},
                      state=RecordDict(), run_config={})
    return instruction, make_client_app(str(run.rundir.path))(instruction, context)


def report_of(reply: Message) -> dict:
    return json.loads(str(reply.content[REPORT_KEY]["json"]))


def test_phases_add_up_and_keep_their_names():
    timer = RunTimer()
    for _ in range(2):
        with timer.phase("data"):
            sum(range(10_000))
    with pytest.raises(ValueError), timer.phase("compute"):
        raise ValueError("a failing phase still counts")
    seconds = timer.seconds()
    assert set(seconds) == {"data", "compute"} and all(v > 0 for v in seconds.values())
    timing = timer.as_dict()
    assert timing["data_s"] == seconds["data"] and timing["total_s"] >= sum(seconds.values())


def test_local_round_times_its_parts_on_the_callers_timer(run):
    timer = RunTimer()
    with timer.phase("data"):
        pass
    before = timer.seconds()["data"]
    result = run_local_round(run, 0, run.new_model().state_dict(), 1, None, timer)
    assert set(result.seconds) == {"data", "rebuild", "compute"}
    assert result.seconds["data"] > before, "the round's data access adds to the caller's"
    assert result.seconds["compute"] >= result.report.seconds > 0


def test_the_client_reports_its_parts_and_the_messages_times(run):
    instruction, reply = train_reply(run, 1)
    report = report_of(reply)
    assert report["client"] == 1 and set(report["seconds"]) == {"train", *PARTS}
    assert all(report["seconds"][part] > 0 for part in PARTS)
    timing = report["timing"]
    assert timing["worker"] == os.getpid()
    assert timing["sent_at"] == instruction.metadata.created_at
    assert timing["sent_at"] <= timing["received_at"] <= timing["replied_at"] <= reply.metadata.created_at
    handler = timing["replied_at"] - timing["received_at"]
    assert sum(report["seconds"][part] for part in PARTS) <= handler


def test_the_recorder_splits_each_round_and_the_means_follow(run):
    recorder = RoundRecorder(run)
    recorder.finish_round(0, run.new_model().state_dict())
    replies = [train_reply(run, client)[1] for client in range(2)]
    for reply in replies:
        state = reply.content["arrays"].to_torch_state_dict()
        assert recorder.observe_update(1, report_of(reply)["client"], state, report_of(reply))
    record = recorder.finish_round(1, state)
    seconds = record["seconds"]
    assert {"round", "configure", "dispatch", "aggregate", "evaluation", "save"} <= set(seconds)
    assert seconds["evaluation"] > 0 and seconds["save"] > 0
    parts = seconds["configure"] + seconds["dispatch"] + seconds["aggregate"] + seconds["evaluation"]
    assert 0 < parts <= seconds["round"] + 1e-6
    rounds = run.rundir.read_metrics()
    assert rounds[1]["seconds"] == seconds and "configure" not in rounds[0]["seconds"]
    assert without_timings(rounds[1]["clients"][0]).keys() >= {"client", "num_examples", "train_loss"}
    handlers = sum(c["timing"]["replied_at"] - c["timing"]["received_at"] for c in rounds[1]["clients"])
    means = client_round_seconds(rounds)
    assert means["transfer"] == pytest.approx((seconds["dispatch"] - handlers) / 2), "one worker served both"
    assert server_round_seconds(rounds)["evaluation"] == seconds["evaluation"], "round 0 left out"


def client(worker: int, received: float, handler: float) -> dict:
    return {"client": 0, "seconds": {"train": handler / 2, "data": 0.1, "rebuild": 0.2, "compute": handler / 2,
                                     "pack": 0.05},
            "timing": {"worker": worker, "sent_at": 0.0, "received_at": received, "replied_at": received + handler}}


def test_transfer_is_the_workers_time_outside_the_client_app():
    """Two workers wait 3 s for replies; their clients' handlers take 1 + 1.5 and 2 s: 1.5 s of
    the workers' 6 s went to messaging and waiting, over three client rounds."""
    rounds = [{"round": 0, "clients": [], "seconds": {"round": 1.0, "evaluation": 0.5}},
              {"round": 1, "clients": [client(7, 0.1, 1.0), client(7, 1.2, 1.5), client(8, 0.1, 2.0)],
               "seconds": {"round": 4.0, "configure": 0.5, "dispatch": 3.0, "evaluation": 0.2}},
              {"round": 2, "clients": [{"client": 1, "seconds": {"train": 0.5}}],
               "seconds": {"round": 2.0, "evaluation": 0.4}}]
    means = client_round_seconds(rounds)
    assert means["transfer"] == pytest.approx(1.5 / 3)
    assert means["handler"] == pytest.approx(4.5 / 3) and means["rebuild"] == pytest.approx(0.2)
    assert server_round_seconds(rounds) == pytest.approx({"round": 3.0, "configure": 0.5, "dispatch": 3.0,
                                                          "evaluation": 0.3})

