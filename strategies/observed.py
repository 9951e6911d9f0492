"""A strategy wrapper that hands every client update to the server-side adversary first.

`ObservedStrategy(inner, recorder)` behaves like `inner` (FedAvg, or FedAvg inside one of
Flower's DP wrappers) except that in `aggregate_train` every reply is first shown to the
recorder, which is what the honest-but-curious server sees and keeps. Replies that failed,
carry a malformed or non-finite model, or come from a client that stopped (its privacy budget
is spent) are recorded and left out of the aggregate. The rest are aggregated in client order,
so the floating-point sums, and the run, do not depend on which Ray actor answered first.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from clients.app import CLIENT_ID_KEY, IDENTITY_KEY, REPORT_KEY
from fedmia.recorder import RoundRecorder
from fedmia.run import sample_clients


def last_line(reason: str) -> str:
    """The exception message at the end of a client's remote traceback, for one-line reports."""
    lines = [line.strip() for line in reason.strip().splitlines() if line.strip()]
    return lines[-1].rstrip("'>") if lines else "unknown error"


def _reply_report(message: Message) -> dict[str, Any]:
    record = message.content.config_records.get(REPORT_KEY)
    if record is None:
        raise ValueError("reply has no report")
    report = json.loads(str(record["json"]))
    if not isinstance(report, dict) or not isinstance(report.get("client"), int):
        raise ValueError("reply report has no client id")
    return report


class ObservedStrategy(Strategy):
    """Wrap `inner`; the recorder sees every update before `inner` aggregates.

    Client sampling is seeded here, by client id: `inner` addresses every node, and only the
    nodes of the clients `sample_clients` picks for the round get their message.
    """

    def __init__(self, inner: Strategy, recorder: RoundRecorder, per_round: int) -> None:
        self.inner = inner
        self.recorder = recorder
        self.per_round = per_round
        self._client_of_node: dict[int, int] | None = None

    def client_of_node(self, grid: Grid) -> dict[int, int]:
        """Ask every node once which client it is."""
        if self._client_of_node is None:
            queries = [Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY)
                       for node in grid.get_node_ids()]
            self._client_of_node = {
                reply.metadata.src_node_id: int(reply.content[IDENTITY_KEY][CLIENT_ID_KEY])
                for reply in grid.send_and_receive(queries) if not reply.has_error()}
        return self._client_of_node

    def __repr__(self) -> str:
        return f"ObservedStrategy({self.inner!r})"

    def summary(self) -> None:
        self.inner.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        config_run = self.recorder.run.config
        clients = self.client_of_node(grid)
        chosen = set(sample_clients(config_run.clients, self.per_round, config_run.seed, server_round))
        messages = self.inner.configure_train(server_round, arrays, config, grid)
        return [m for m in messages if clients.get(m.metadata.dst_node_id) in chosen]

    def _accept(self, server_round: int, message: Message) -> int | None:
        """The client id of a reply that goes into the aggregate; None for one that does not."""
        if message.has_error():
            self.recorder.record_problem(server_round, None,
                                         f"node {message.metadata.src_node_id} failed: "
                                         f"{last_line(message.error.reason)}")
            return None
        try:
            report = _reply_report(message)
            state = next(iter(message.content.array_records.values())).to_torch_state_dict()
        except (ValueError, StopIteration, KeyError, TypeError) as error:
            self.recorder.record_problem(server_round, None,
                                         f"node {message.metadata.src_node_id} sent a malformed reply: {error}")
            return None
        accepted = self.recorder.observe_update(server_round, report["client"], state, report)
        return report["client"] if accepted and not report.get("stopped") else None

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        accepted = [(client, message) for message in replies
                     if (client := self._accept(server_round, message)) is not None]
        kept = [message for _, message in sorted(accepted, key=lambda pair: pair[0])]
        if not kept:
            self.recorder.record_problem(server_round, None, "no usable update: global model kept")
            return None, None
        return self.inner.aggregate_train(server_round, kept)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.inner.aggregate_evaluate(server_round, replies)
