"""The end-of-run summary on the terminal, and re-checking a run from its files."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fedmia.metrics import held_out_bound, membership_metrics
from fedmia.inversion.base import GRADIENT_INVERSION
from fedmia.inversion.phase import recompute_inversions
from fedmia.rundir import RunDirectory, reported_tables


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def print_summary(results: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    run, glob = results["run"], results["global"]
    best = glob["attacks"][glob["strongest_attack"]]
    console.print(f"\nglobal model: test accuracy {_num(run['final_test_accuracy'])}, strongest attack "
                  f"{glob['strongest_attack']} AUC {_num(best['auc'])}, TPR@1%FPR "
                  f"{_num(best['tpr_at_1pct_fpr'])}, measured eps >= {_num(glob['eps_lower_bound'], 2)}")
    table = Table(title="per client (server adversary, last upload)")
    for column in ("client", "defense", "n", "test acc", "formal eps", "measured eps lb", "AUC"):
        table.add_column(column, justify="right")
    for row in results["clients"]:
        if not row["trained"]:
            table.add_row(str(row["client"]), row["defense"], str(row["n_train"]), "-", "-", "-", "-")
            continue
        table.add_row(str(row["client"]), row["defense"], str(row["n_train"]), _num(row["test_accuracy"]),
                      formal_epsilon(row), _num(row["eps_lower_bound"], 2),
                      _num(row["attacks"][row["strongest_attack"]]["auc"]))
    console.print(table)
    if any(row.get("epsilon_not_covering") for row in results["clients"]):
        console.print("* formal eps covers only the noisy steps: the defense also reads the client's "
                      "records outside them (see report.md)")
    for line in inversion_lines(results.get("inversion")):
        console.print(line)
    timing = results["timing"]
    console.print("time: " + ", ".join(f"{k.removesuffix('_s')} {v:.1f}s" for k, v in timing.items()))
    console.print(f"report: {Path(run['out']) / 'report.md'}")


def inversion_lines(inversion: dict[str, Any] | None) -> list[str]:
    """One line per inversion attack: the best and mean PSNR over clients (gradient inversion),
    or the attack accuracy per scope and class (model inversion)."""
    by_attack: dict[str, list[dict[str, Any]]] = {}
    for entry in (inversion or {}).get("results", []):
        if "metrics" in entry:
            by_attack.setdefault(entry["attack"], []).append(entry)
    lines = []
    for attack, entries in by_attack.items():
        if entries[0]["kind"] == GRADIENT_INVERSION:
            best = max(entries, key=lambda e: e["metrics"]["psnr"])
            mean = sum(e["metrics"]["psnr"] for e in entries) / len(entries)
            lines.append(f"inversion {attack}: best PSNR {_num(best['metrics']['psnr'], 1)} dB ({best['scope']}), "
                         f"mean {_num(mean, 1)} dB over {len(entries)} uploads")
        else:
            lines.append(f"inversion {attack}: attack accuracy " + ", ".join(
                f"{_num(e['metrics']['attack_accuracy'], 2)} ({e['scope']}, class {e['class']})" for e in entries))
    return lines


def formal_epsilon(row: dict[str, Any]) -> str:
    privacy = row.get("privacy")
    if not privacy:
        return "inf"
    return _num(privacy["epsilon"], 2) + ("*" if row.get("epsilon_not_covering") else "")


def _same(fresh: Any, stored: Any) -> bool:
    if isinstance(fresh, (int, float)) and isinstance(stored, (int, float)):
        return math.isclose(fresh, stored, rel_tol=1e-9, abs_tol=1e-12)
    return fresh == stored


def _differences(where: str, fresh: dict[str, Any], reported: dict[str, Any]) -> list[str]:
    return [f"{where} {key}: saved {reported.get(key)}, recomputed {value}"
            for key, value in fresh.items() if not _same(value, reported.get(key))]


def check_run(path: Path) -> list[str]:
    """Recompute every attack metric and each scope's held-out epsilon bound from
    scores/*.npz; the list of numbers that differ. The run directory is verified first: a
    missing or damaged file is one FedmiaError naming it."""
    rundir = RunDirectory(path)
    results = rundir.verify_attacked()
    mismatches = []
    for scope, table in reported_tables(results):
        saved = {attack: rundir.load_scores(scope, attack) for attack in table["attacks"]}
        for attack, reported in table["attacks"].items():
            fresh = membership_metrics(saved[attack]["scores"], saved[attack]["labels"], reported["delta"])
            mismatches += _differences(f"{scope} {attack}", fresh.to_dict(), reported)
        first = next(iter(saved.values()))
        bound = held_out_bound({attack: data["scores"] for attack, data in saved.items()}, first["labels"],
                               first["halves"], table["eps_bound"]["delta"])
        mismatches += _differences(f"{scope} held-out bound", bound.to_dict(), table["eps_bound"])
    for where, fresh_metrics, reported_metrics in recompute_inversions(rundir, results):
        mismatches += _differences(where, fresh_metrics, reported_metrics)
    return mismatches
