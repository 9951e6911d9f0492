"""Every attack, every adversary, on a leaky federation, over several seeds.

Runs `simulate` on experiments/scenarios/leaky-fashion.toml (Fashion-MNIST, 4 clients with 200
records each, 15 local epochs a round; client 3 malicious) once per seed and per malicious mode
(passive, active), and summarizes per scope and attack: AUC, TPR at 1% and 0.1% FPR (null
where the scope has fewer than 1/FPR non-members, docs/PROTOCOL.md), mean ± standard deviation
over seeds. Scopes: `global` (the server on the final model), `querier` (the top-3 posteriors
of the final model), `client:k` (the server on each honest client's uploads, averaged over k = 0-2
within a seed), `malicious:3` (client 3 on the other clients' data, passive and active). It also
draws a log-log ROC of every attack per scope (seed 0) and the cost of each attack.

Run: `python experiments/adversary_strength.py` (about half an hour on 2 cores). It rewrites
experiments/results/adversary-strength/summary.{json,md} and roc-*.png; a rerun on this machine
reproduces them byte for byte. Timings vary from run to run, so they go to cost.md only.
Each run directory is left under runs/adversary-strength/.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from fedmia.config import load_toml, resolve_config
from fedmia.metrics import roc
from fedmia.rundir import RunDirectory, file_safe
from fedmia.simulation import simulate

SCENARIO = Path(__file__).parent / "scenarios" / "leaky-fashion.toml"
RESULTS = Path(__file__).parent / "results" / "adversary-strength"
RUNS = Path("runs") / "adversary-strength"
SEEDS = (0, 1, 2)
MODES = ("passive", "active")
MALICIOUS = 3
METRICS = {"auc": "AUC", "tpr_at_1pct_fpr": "TPR@1%FPR", "tpr_at_01pct_fpr": "TPR@0.1%FPR"}
DIGITS = 4


def run_once(seed: int, mode: str) -> dict[str, Any]:
    settings = load_toml(SCENARIO)
    settings.update(seed=seed, out=str(RUNS / f"{mode}-seed{seed}"))
    settings["client"] = [{**group, "attack": mode} if group.get("role") == "malicious" else group
                          for group in settings["client"]]
    config = resolve_config(settings, {})
    RunDirectory(config.out).ensure_fresh(overwrite=True)
    return simulate(config)


def honest_clients(results: dict[str, Any]) -> list[dict[str, Any]]:
    return [row for row in results["clients"] if row.get("attacks") and row["client"] != MALICIOUS]


def compared_scopes(results: dict[str, Any], mode: str) -> dict[str, list[dict[str, Any]]]:
    """The scopes this experiment compares, each with its attack tables (several for the
    honest clients). The malicious client's own upload is not a victim, so it is left out."""
    scopes = {f"malicious:{MALICIOUS} ({mode})": [results["adversaries"][f"malicious:{MALICIOUS}"]]}
    if mode == MODES[0]:
        scopes = {"global": [results["global"]], "querier": [results["adversaries"]["querier"]],
                  "client:k (k = 0-2)": honest_clients(results), **scopes}
    return scopes


def attack_values(tables: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Per attack, each metric averaged over the tables (null when any table has none)."""
    values: dict[str, dict[str, float | None]] = {}
    for attack in tables[0]["attacks"]:
        values[attack] = {}
        for key in METRICS:
            numbers = [table["attacks"][attack][key] for table in tables]
            values[attack][key] = None if None in numbers else round(statistics.mean(numbers), DIGITS)
    return values


def spread(values: list[float | None]) -> str:
    if any(v is None for v in values):
        return "null"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def costs(results: dict[str, Any]) -> dict[str, float]:
    """Seconds of the adversary's model training and of each attack, over all scopes."""
    tables = [results["global"], *[r for r in results["clients"] if r.get("attacks")],
              *results["adversaries"].values()]
    totals = {"shadow models": sum(t["seconds"]["shadow"] for t in tables),
              "reference models": sum(t["seconds"]["references"] for t in tables)}
    for table in tables:
        for attack, metrics in table["attacks"].items():
            totals[attack] = totals.get(attack, 0.0) + metrics["seconds"]
    return totals


def plot_rocs(results: dict[str, Any], mode: str) -> None:
    """Log-log ROC of every attack on each compared scope of one run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rundir = RunDirectory(results["run"]["out"])
    tables = {f"malicious:{MALICIOUS}": results["adversaries"][f"malicious:{MALICIOUS}"]}
    if mode == MODES[0]:
        tables = {"global": results["global"], "querier": results["adversaries"]["querier"],
                  "client:0": results["clients"][0], **tables}
    for scope, table in tables.items():
        figure, axis = plt.subplots(figsize=(6, 5.5))
        floor = 1.0
        for attack, metrics in table["attacks"].items():
            data = rundir.load_scores(scope, attack)
            fpr, tpr = roc(data["scores"], data["labels"])
            floor = min(floor, 1.0 / max(int((data["labels"] == 0).sum()), 1))
            axis.plot(fpr.clip(floor), tpr.clip(floor), lw=1.1, label=f"{attack} (AUC {metrics['auc']:.2f})")
        axis.plot([floor, 1], [floor, 1], "k--", lw=0.8)
        axis.set(xscale="log", yscale="log", xlim=(floor, 1), ylim=(floor, 1), xlabel="false positive rate",
                 ylabel="true positive rate", title=f"{scope}, {mode} run, seed {SEEDS[0]}")
        axis.legend(fontsize=6, loc="lower right")
        figure.tight_layout()
        figure.savefig(RESULTS / f"roc-{mode}-{file_safe(scope)}.png", dpi=110, metadata={"Software": None})
        plt.close(figure)


def markdown(summary: dict[str, Any]) -> str:
    seeds = summary["seeds"]
    first = seeds[f"seed{SEEDS[0]}"]
    lines = ["# Every attack, every adversary: a leaky federation (Fashion-MNIST)", "",
             f"`python experiments/adversary_strength.py`: `simulate --config "
             f"{SCENARIO.relative_to(Path(__file__).parent.parent)}` for seeds {', '.join(map(str, SEEDS))}, "
             "with client 3 malicious, passive and active. Mean ± standard deviation over seeds. "
             "`null`: the scope has fewer than 1/FPR non-members (docs/PROTOCOL.md).", ""]
    for scope, attacks in first.items():
        lines += [f"## {scope}", "", "| attack | " + " | ".join(METRICS.values()) + " |",
                  "|---|" + "---|" * len(METRICS)]
        for attack in attacks:
            cells = [spread([seeds[seed][scope][attack][key] for seed in seeds]) for key in METRICS]
            lines.append(f"| {attack} | " + " | ".join(cells) + " |")
        lines.append("")
    accuracy = summary["global_test_accuracy"]
    lines += ["Final global test accuracy: " + ", ".join(f"{mode} run {spread(values)}"
                                                         for mode, values in accuracy.items()) + ".", ""]
    return "\n".join(lines)


def main() -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    seeds: dict[str, dict[str, Any]] = {}
    accuracy: dict[str, list[float]] = {mode: [] for mode in MODES}
    totals: dict[str, list[float]] = {}
    for seed in SEEDS:
        seeds[f"seed{seed}"] = {}
        for mode in MODES:
            results = run_once(seed, mode)
            accuracy[mode].append(round(results["run"]["final_test_accuracy"], DIGITS))
            for scope, tables in compared_scopes(results, mode).items():
                seeds[f"seed{seed}"][scope] = attack_values(tables)
            for what, seconds in costs(results).items():
                totals.setdefault(what, []).append(seconds)
            if seed == SEEDS[0]:
                plot_rocs(results, mode)
    summary = {"seeds": seeds, "global_test_accuracy": accuracy}
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (RESULTS / "summary.md").write_text(markdown(summary))
    cost = ["# Attack cost per run (seconds, mean over the runs; varies from run to run)", "",
            "| what | seconds |", "|---|---|", *[f"| {what} | {statistics.mean(v):.1f} |" for what, v in totals.items()]]
    (RESULTS / "cost.md").write_text("\n".join(cost) + "\n")
    print(markdown(summary))


if __name__ == "__main__":
    main()
