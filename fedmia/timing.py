"""Wall-time split of a run (Ray start-up, training, attacks, report), for results.json."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

#: Keys of results.json that hold wall time: they differ between two runs of one config.
TIMING_KEYS = ("timing", "seconds")


class RunTimer:
    """Seconds per phase, plus the total since the timer was created."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.phases: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        begun = time.perf_counter()
        try:
            yield
        finally:
            self.phases[f"{name}_s"] = self.phases.get(f"{name}_s", 0.0) + time.perf_counter() - begun

    def as_dict(self) -> dict[str, float]:
        return {**self.phases, "total_s": time.perf_counter() - self.started}


def without_timings(value: Any) -> Any:
    """`value` (results.json, or part of it) without its wall times, which are all a rerun of
    the same config and seed may change."""
    if isinstance(value, dict):
        return {key: without_timings(item) for key, item in value.items() if key not in TIMING_KEYS}
    if isinstance(value, list):
        return [without_timings(item) for item in value]
    return value
