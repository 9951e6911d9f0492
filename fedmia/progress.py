"""Progress display: one bar for the training rounds, one for the attack phase.

Replaces Ray's and Flower's log output on the terminal (`-v` brings their logs back). A run
attacks one scope per client, so the attack phase is a single bar with scope counts and ETA,
never a line per scope: on a terminal the bars redraw in place; elsewhere (a log file, a
pipe) a round prints one line and the attack phase at most `ATTACK_LINES` lines.
"""

from __future__ import annotations

import time
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, Progress as RichProgress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fedmia.recorder import RoundSummary

ATTACK_LINES = 10


class Progress(Protocol):
    def on_prepared(self, done: int, total: int) -> None: ...
    def on_startup(self, clients: int) -> None: ...
    def on_round(self, summary: RoundSummary) -> None: ...
    def on_attacks(self, total_scopes: int, phase: str = "attacks") -> None: ...
    def on_scope(self, scope: str) -> None: ...
    def on_attacks_done(self) -> None: ...


class SilentProgress:
    """No display (tests, `flwr run`)."""

    def on_prepared(self, done: int, total: int) -> None:
        pass

    def on_startup(self, clients: int) -> None:
        pass

    def on_round(self, summary: RoundSummary) -> None:
        pass

    def on_attacks(self, total_scopes: int, phase: str = "attacks") -> None:
        pass

    def on_scope(self, scope: str) -> None:
        pass

    def on_attacks_done(self) -> None:
        pass


class TerminalProgress:
    """A live bar over rounds, then one over attacked scopes (counts, elapsed, ETA, the scope
    being attacked); plain lines, few of them, when the console is not a terminal."""

    def __init__(self, total_rounds: int, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.live = self.console.is_terminal
        self.bar = RichProgress(
            TextColumn("{task.description:<8}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"), console=self.console, disable=not self.live,
        )
        self.rounds = self.bar.add_task("training", total=total_rounds, status="")
        self.scopes: TaskID | None = None
        self.preparing: TaskID | None = None
        self.scopes_done = 0
        self.phase = "attacks"
        self.attacks_started = 0.0
        self.bar.start()

    def _line(self, text: str) -> None:
        if not self.live:
            self.console.print(text, highlight=False, soft_wrap=True)

    def on_prepared(self, done: int, total: int) -> None:
        """`done` of `total` clients have prepared their defenses."""
        if self.preparing is None:
            self.preparing = self.bar.add_task("preparing", total=total, status="diffusion models, teachers")
        self.bar.update(self.preparing, completed=done)
        self._line(f"prepared {done}/{total} clients' defenses")

    def on_startup(self, clients: int) -> None:
        """The client workers are starting (importing torch, loading the run)."""
        self.bar.update(self.rounds, status=f"starting {clients} clients")
        self._line(f"starting {clients} clients")

    def on_round(self, summary: RoundSummary) -> None:
        status = f"test acc {summary.test_accuracy:.3f}"
        self.bar.update(self.rounds, completed=summary.server_round, status=status)
        self._line(f"round {summary.server_round}/{summary.total_rounds}  "
                   f"elapsed {summary.elapsed:.1f}s  {status}")

    def on_attacks(self, total_scopes: int, phase: str = "attacks") -> None:
        """A bar over the scopes of `phase` (the membership attacks, or the inversions)."""
        self.phase = phase
        self.scopes = self.bar.add_task(phase, total=total_scopes, status="")
        self.scopes_done = -1
        self.attacks_started = time.perf_counter()
        self._line(f"{phase}: {total_scopes} scopes")

    def on_scope(self, scope: str) -> None:
        """`scope` starts, so the one before it is done."""
        self._advance(self.scopes_done + 1, f"{'inverting' if self.phase == 'inversion' else 'attacking'} {scope}")

    def on_attacks_done(self) -> None:
        if self.scopes is not None:
            self._advance(int(self.bar.tasks[self.scopes].total or 0), "done")

    def _advance(self, done: int, status: str) -> None:
        if self.scopes is None:
            return
        total = int(self.bar.tasks[self.scopes].total or 0)
        previous, self.scopes_done = self.scopes_done, done
        self.bar.update(self.scopes, completed=max(done, 0), status=status)
        if done > 0 and self._milestone(previous, done, total):
            elapsed = time.perf_counter() - self.attacks_started
            eta = elapsed / done * (total - done)
            self._line(f"{self.phase} {done}/{total} scopes  elapsed {elapsed:.1f}s  ETA {eta:.0f}s")

    @staticmethod
    def _milestone(previous: int, done: int, total: int) -> bool:
        """True when `done` crosses one of ATTACK_LINES evenly spaced marks (the last is `total`)."""
        def mark(count: int) -> int:
            return count * ATTACK_LINES // max(total, 1)
        return mark(done) > mark(max(previous, 0))

    def close(self) -> None:
        self.bar.stop()
