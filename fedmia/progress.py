"""Progress display: round, elapsed time, ETA and test accuracy, then the attack phase.

Replaces Ray's and Flower's log output on the terminal (`-v` brings their logs back).
"""

from __future__ import annotations

import sys
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from fedmia.recorder import RoundSummary


class Progress(Protocol):
    def on_round(self, summary: RoundSummary) -> None: ...
    def on_phase(self, phase: str) -> None: ...
    def on_scope(self, scope: str) -> None: ...


class SilentProgress:
    """No display (tests, `flwr run`)."""

    def on_round(self, summary: RoundSummary) -> None:
        pass

    def on_phase(self, phase: str) -> None:
        pass

    def on_scope(self, scope: str) -> None:
        pass


class TerminalProgress:
    """A live bar over rounds, then over attacked scopes; one line per event when not a TTY."""

    def __init__(self, total_rounds: int, total_scopes: int, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.bar = RichProgress(
            TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            TextColumn("{task.fields[status]}"), console=self.console, transient=False,
            disable=not self.console.is_terminal,
        )
        self.rounds = self.bar.add_task("training", total=total_rounds, status="")
        self.scopes = self.bar.add_task("attacks", total=total_scopes, status="", visible=False)
        self.bar.start()

    def _line(self, text: str) -> None:
        if not self.console.is_terminal:
            print(text, file=sys.stderr, flush=True)

    def on_round(self, summary: RoundSummary) -> None:
        status = f"test acc {summary.test_accuracy:.3f}"
        self.bar.update(self.rounds, completed=summary.server_round, status=status)
        self._line(f"round {summary.server_round}/{summary.total_rounds}  "
                   f"elapsed {summary.elapsed:.1f}s  {status}")

    def on_phase(self, phase: str) -> None:
        self.bar.update(self.scopes, visible=True)
        self._line(f"{phase} ...")

    def on_scope(self, scope: str) -> None:
        task = self.bar.tasks[self.scopes]
        self.bar.update(self.scopes, advance=1 if task.fields["status"] else 0, status=scope)
        self._line(f"attacking {scope}")

    def close(self) -> None:
        task = self.bar.tasks[self.scopes]
        self.bar.update(self.scopes, completed=task.total)
        self.bar.stop()
