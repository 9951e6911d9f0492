"""DP-SGD budgets 1, 4, 8 and none over 20 clients, five each, over several seeds.

Runs `simulate` on experiments/scenarios/budgets-1-4-8-inf.toml once per seed and summarizes
every budget group: formal epsilon, the held-out measured bound (and the optimistic one, labelled
so), the strongest attack's AUC, the loss attack's AUC, and the utility of the clients' uploads
(test accuracy, generalization gap); mean ± standard deviation over seeds, each seed's group
mean being one sample. Each seed's full run directory (report, plots, scores) is left under
runs/budgets-1-4-8-inf-seeds/seedN.

Run: `python experiments/budgets.py` (a few minutes on 2 cores). It rewrites
experiments/results/budgets-1-4-8-inf/summary.{json,md}; a rerun on this machine reproduces
both byte for byte (timings are left out).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from fedmia.config import load_toml, resolve_config
from fedmia.rundir import RunDirectory
from fedmia.simulation import simulate

SCENARIO = Path(__file__).parent / "scenarios" / "budgets-1-4-8-inf.toml"
RESULTS = Path(__file__).parent / "results" / "budgets-1-4-8-inf"
RUNS = Path("runs") / "budgets-1-4-8-inf-seeds"
SEEDS = (0, 1, 2)
DIGITS = 4
COLUMNS = {
    "formal_epsilon": "formal eps",
    "eps_lower_bound": "measured eps (held-out)",
    "eps_lower_bound_optimistic": "measured eps (optimistic)",
    "strongest_auc": "strongest-attack AUC",
    "loss_auc": "loss AUC",
    "test_accuracy": "upload test acc",
    "generalization_gap": "generalization gap",
}


def budget_of(row: dict[str, Any]) -> str:
    return str(row["params"].get("epsilon", "inf")) if row["defense"] == "dpsgd" else "inf"


def client_values(row: dict[str, Any]) -> dict[str, float]:
    privacy = row.get("privacy") or {}
    return {
        "formal_epsilon": privacy.get("epsilon"),
        "eps_lower_bound": row["eps_lower_bound"],
        "eps_lower_bound_optimistic": row["eps_lower_bound_optimistic"],
        "strongest_auc": row["attacks"][row["strongest_attack"]]["auc"],
        "loss_auc": row["attacks"]["loss"]["auc"],
        "test_accuracy": row["test_accuracy"],
        "generalization_gap": row["generalization_gap"],
    }


def group_mean(values: list[float | None]) -> float | None:
    """None (no formal guarantee) when any client of the group has none."""
    return None if any(v is None for v in values) else statistics.mean(values)


def seed_summary(results: dict[str, Any]) -> dict[str, Any]:
    """One seed: per budget group, the mean of each value over the group's clients."""
    groups: dict[str, list[dict[str, float]]] = {}
    for row in results["clients"]:
        if row["trained"]:
            groups.setdefault(budget_of(row), []).append(client_values(row))
    return {
        "global_test_accuracy": results["run"]["final_test_accuracy"],
        "groups": {budget: {key: group_mean([v[key] for v in values]) for key in COLUMNS}
                   for budget, values in groups.items()},
    }


def run_seed(seed: int) -> dict[str, Any]:
    settings = {**load_toml(SCENARIO), "seed": seed, "out": str(RUNS / f"seed{seed}")}
    config = resolve_config(settings, {})
    RunDirectory(config.out).ensure_fresh(overwrite=True)
    return seed_summary(simulate(config))


def rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, DIGITS)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    return value


def spread(values: list[float | None]) -> str:
    if any(v is None for v in values):
        return "none"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def markdown(summaries: dict[str, dict[str, Any]]) -> str:
    budgets = list(next(iter(summaries.values()))["groups"])
    lines = [
        "# DP-SGD budgets 1, 4, 8 and none (20 clients, digits, five clients each)",
        "",
        f"`python experiments/budgets.py`: `simulate --config {SCENARIO.relative_to(Path(__file__).parent.parent)}`",
        f"for seeds {', '.join(map(str, SEEDS))}. Per seed, each value is the mean over the group's five",
        "clients (scope `client:k`: the server attacks each client's last upload); the table gives",
        "mean ± standard deviation of those means over seeds. The held-out bound keeps its 95%",
        "level (attack and threshold chosen on the other half of the evaluation set, docs/PROTOCOL.md);",
        "the optimistic one maximises over attacks and thresholds on the same labels.",
        "",
        "| budget | " + " | ".join(COLUMNS.values()) + " |",
        "|---|" + "---|" * len(COLUMNS),
    ]
    for budget in budgets:
        cells = [spread([s["groups"][budget][key] for s in summaries.values()]) for key in COLUMNS]
        lines.append(f"| {budget} | " + " | ".join(cells) + " |")
    accuracy = spread([s["global_test_accuracy"] for s in summaries.values()])
    lines += ["", f"Global model test accuracy: {accuracy}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    summaries = {f"seed{seed}": rounded(run_seed(seed)) for seed in SEEDS}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "summary.json").write_text(json.dumps(summaries, indent=2) + "\n")
    (RESULTS / "summary.md").write_text(markdown(summaries))
    print(markdown(summaries))


if __name__ == "__main__":
    main()
