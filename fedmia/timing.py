"""Wall-time split of a run (Ray start-up, training, attacks, report), for results.json, and
of its training rounds (what a client round and a server round spend their time on)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: Keys of results.json and metrics.jsonl that hold wall time: they differ between two runs of
#: one config.
TIMING_KEYS = ("timing", "seconds")


class RunTimer:
    """Seconds per phase (a phase entered twice adds up), plus the total since creation."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self._seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        begun = time.perf_counter()
        try:
            yield
        finally:
            self._seconds[name] = self._seconds.get(name, 0.0) + time.perf_counter() - begun

    def seconds(self) -> dict[str, float]:
        """Seconds per phase name."""
        return dict(self._seconds)

    def as_dict(self) -> dict[str, float]:
        """Seconds per phase as results.json's `timing` writes them (`<phase>_s`, `total_s`)."""
        return {**{f"{name}_s": value for name, value in self._seconds.items()},
                "total_s": time.perf_counter() - self.started}


def without_timings(value: Any) -> Any:
    """`value` (results.json, or part of it) without its wall times, which are all a rerun of
    the same config and seed may change."""
    if isinstance(value, dict):
        return {key: without_timings(item) for key, item in value.items() if key not in TIMING_KEYS}
    if isinstance(value, list):
        return [without_timings(item) for item in value]
    return value


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def client_round_seconds(rounds: list[dict[str, Any]]) -> dict[str, float | None]:
    """Mean seconds per client round of metrics.jsonl's `rounds`: each part the clients timed
    ("data", "rebuild", "compute", "pack", and "handler", the whole ClientApp call), and
    "transfer": the time the round's workers spent outside the ClientApp while the server
    waited for replies (sending, queueing, Ray's and Flower's hand-offs, receiving), that is the
    workers' count times the dispatch time minus their handler time, per client round."""
    reports = [c for r in rounds for c in r["clients"] if "timing" in c]
    handler = {id(c): c["timing"]["replied_at"] - c["timing"]["received_at"] for c in reports}
    means: dict[str, float | None] = {
        part: _mean([c["seconds"][part] for c in reports if part in c["seconds"]])
        for part in ("data", "rebuild", "compute", "pack")}
    means["handler"] = _mean(list(handler.values()))
    idle = [len({c["timing"]["worker"] for c in r["clients"] if "timing" in c}) * r["seconds"]["dispatch"]
            - sum(handler[id(c)] for c in r["clients"] if "timing" in c)
            for r in rounds if "dispatch" in r.get("seconds", {})]
    means["transfer"] = sum(idle) / len(reports) if reports else None
    return means


def server_round_seconds(rounds: list[dict[str, Any]]) -> dict[str, float | None]:
    """Mean seconds per training round (round 0, the initial model's evaluation, left out) of
    each part `RoundRecorder.round_seconds` records."""
    trained = [r["seconds"] for r in rounds if r["round"] > 0 and "seconds" in r]
    parts = sorted({part for seconds in trained for part in seconds})
    return {part: _mean([s[part] for s in trained if part in s]) for part in parts}
