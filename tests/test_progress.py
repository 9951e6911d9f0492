"""The progress display: one bar for the attack phase, never a line per attacked scope."""

import io
import re

from rich.console import Console

from fedmia.progress import ATTACK_LINES, TerminalProgress
from fedmia.recorder import RoundSummary

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_display(console: Console, rounds: int, clients: int, stop_after: int | None = None) -> str:
    """Drive the display through a whole run (or up to `stop_after` scopes) and return what it
    wrote, without escape codes."""
    progress = TerminalProgress(rounds, console=console)
    for server_round in range(rounds + 1):
        progress.on_round(RoundSummary(server_round, rounds, 0.5 + server_round / 100, 1.0 + server_round))
    scopes = ["global"] + [f"client:{k}" for k in range(clients)]
    progress.on_attacks(len(scopes))
    for scope in scopes[:stop_after]:
        progress.on_scope(scope)
    if stop_after is None:
        progress.on_attacks_done()
    else:
        progress.bar.refresh()
    progress.close()
    return ANSI.sub("", console.file.getvalue())


def final_frame(text: str) -> list[str]:
    """The lines a terminal shows at the end: each redraw erases the frame before it."""
    last_redraw = text.rsplit("\r", 1)[-1]
    return [line.strip() for line in last_redraw.splitlines() if line.strip()]


def test_a_terminal_shows_one_attack_bar_with_scope_counts_and_eta():
    console = Console(file=io.StringIO(), force_terminal=True, width=140)
    text = run_display(console, rounds=5, clients=1000, stop_after=400)
    frame = final_frame(text)
    assert len(frame) == 2, frame
    training, attacks = frame
    assert training.startswith("training") and "5/5" in training and "test acc 0.550" in training
    assert attacks.startswith("attacks") and "399/1001" in attacks and "ETA" in attacks
    assert "attacking client:398" in attacks
    drawn = [line.strip() for line in re.split(r"[\r\n]", text) if line.strip()]
    assert all(line.startswith(("training", "attacks")) for line in drawn), "only the bars, redrawn"


def test_a_finished_attack_phase_shows_the_full_count():
    console = Console(file=io.StringIO(), force_terminal=True, width=140)
    _, attacks = final_frame(run_display(console, rounds=2, clients=20))
    assert "21/21" in attacks and "done" in attacks


def test_log_output_has_a_line_per_round_and_few_attack_lines():
    """Written to a file or pipe, 1,001 scopes print ATTACK_LINES progress lines, not 1,001."""
    console = Console(file=io.StringIO(), force_terminal=False, width=140)
    lines = run_display(console, rounds=3, clients=1000).splitlines()
    assert [line.split()[1] for line in lines if line.startswith("round")] == ["0/3", "1/3", "2/3", "3/3"]
    attack_lines = [line for line in lines if line.startswith("attacks")]
    assert attack_lines[0] == "attacks: 1001 scopes"
    assert len(attack_lines) == 1 + ATTACK_LINES
    assert attack_lines[1].startswith("attacks 101/1001 scopes") and "ETA" in attack_lines[1]
    assert attack_lines[-1].startswith("attacks 1001/1001 scopes")
    assert not any("client:" in line for line in lines)


def test_log_output_for_a_small_run_reports_every_scope_count():
    console = Console(file=io.StringIO(), force_terminal=False, width=140)
    lines = run_display(console, rounds=1, clients=3).splitlines()
    counts = [line.split()[1] for line in lines if line.startswith("attacks ")]
    assert counts == ["1/4", "2/4", "3/4", "4/4"]
