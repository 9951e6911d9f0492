"""Seed 000's comparison of defenses, in a federation: every defense over the seed's grid and
DP-SGD at epsilon 1, 4 and 8, one client each, in one federation per seed.

`python experiments/defense_tradeoff/run.py SCENARIO [--seeds 0,1,2]` runs `simulate` on
`experiments/defense_tradeoff/SCENARIO.toml` once per seed and writes, under
`experiments/results/defense-tradeoff/SCENARIO/`:
- `summary.json`: per client (defense setting), over seeds: its last upload's train and test
  accuracy and generalization gap, and each attack's AUC and TPR at 1% FPR (the server's
  `client:k` scope), plus the global and querier scopes;
- `summary.md`: the table of seed 000's Table 1 (train / test / gap) with the AUCs, mean ±
  standard deviation over seeds;
- `tradeoff.png`: the privacy-utility scatter, test accuracy against AUC, one panel per attack.
Timings go to `cost.md` only, so a rerun on this machine reproduces the rest byte for byte.
Run directories are left under runs/defense-tradeoff/.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from fedmia.config import load_toml, resolve_config
from fedmia.rundir import RunDirectory
from fedmia.simulation import simulate

HERE = Path(__file__).parent
RESULTS = HERE.parent / "results" / "defense-tradeoff"
DIGITS = 4
#: What seed 000 calls acceptable privacy: attack AUC below this.
AUC_GOAL = 0.6


def run_once(scenario: str, seed: int) -> dict[str, Any]:
    settings = load_toml(HERE / f"{scenario}.toml")
    settings.update(seed=seed, out=f"{settings['out']}-seed{seed}")
    config = resolve_config(settings, {})
    RunDirectory(config.out).ensure_fresh(overwrite=True)
    return simulate(config)


def setting(row: dict[str, Any]) -> str:
    """A client's defense with its parameters, e.g. `mixup alpha=0.3`."""
    params = " ".join(f"{key}={value}" for key, value in row["params"].items())
    return f"{row['defense']} {params}".strip()


def client_values(row: dict[str, Any]) -> dict[str, Any]:
    values = {key: round(row[key], DIGITS) for key in ("train_accuracy", "test_accuracy", "generalization_gap")}
    values["privacy_epsilon"] = row["privacy"]["epsilon"] if row.get("privacy") else None
    values["epsilon_covers_client"] = not row.get("epsilon_not_covering")
    values["attacks"] = {name: {"auc": round(m["auc"], DIGITS),
                                "tpr_at_1pct_fpr": None if m["tpr_at_1pct_fpr"] is None else round(m["tpr_at_1pct_fpr"], DIGITS)}
                         for name, m in row["attacks"].items()}
    return values


def scope_values(table: dict[str, Any]) -> dict[str, Any]:
    return {"test_accuracy": round(table["test_accuracy"], DIGITS),
            "attacks": {name: round(m["auc"], DIGITS) for name, m in table["attacks"].items()}}


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    clients = {f"{row['client']:02d} {setting(row)}": client_values(row) for row in results["clients"] if row["trained"]}
    return {"clients": clients, "global": scope_values(results["global"]),
            "querier": scope_values(results["adversaries"]["querier"]),
            "final_test_accuracy": round(results["run"]["final_test_accuracy"], DIGITS)}


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def cell(values: list[float]) -> str:
    mean, sd = mean_sd(values)
    return f"{mean:.3f} ± {sd:.3f}"


def across_seeds(per_seed: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """Per client, each metric's values over the seeds."""
    table: dict[str, dict[str, list[float]]] = {}
    for summary in per_seed:
        for client, values in summary["clients"].items():
            row = table.setdefault(client, {})
            for key in ("train_accuracy", "test_accuracy", "generalization_gap"):
                row.setdefault(key, []).append(values[key])
            if values["privacy_epsilon"] is not None:
                row.setdefault("epsilon", []).append(values["privacy_epsilon"])
                row["epsilon_covers_client"] = [values["epsilon_covers_client"]]
            for attack, metrics in values["attacks"].items():
                row.setdefault(attack, []).append(metrics["auc"])
    return table


def epsilon_cell(row: dict[str, Any]) -> str:
    """The formal epsilon spent (mean over seeds), * where it does not cover the client."""
    if "epsilon" not in row:
        return "inf"
    return f"{statistics.mean(row['epsilon']):.2f}" + ("" if row["epsilon_covers_client"][0] else "*")


def verdict(table: dict[str, dict[str, list[float]]], attacks: list[str]) -> list[str]:
    """Seed 000's claim, checked here: which settings keep every attack's mean AUC below 0.6,
    and at what test accuracy compared with no defense."""
    baseline = statistics.mean(v for client, row in table.items() if " none" in client for v in row["test_accuracy"])
    private = [(client, statistics.mean(row["test_accuracy"])) for client, row in table.items()
               if all(statistics.mean(row[a]) < AUC_GOAL for a in attacks)]
    lines = [f"No defense: mean test accuracy {baseline:.3f}.",
             f"Settings whose every attack has mean AUC below {AUC_GOAL}: "
             + (", ".join(f"`{c}` (test acc {acc:.3f})" for c, acc in private) or "none") + "."]
    return lines


def markdown(scenario: str, seeds: list[int], per_seed: list[dict[str, Any]]) -> str:
    table = across_seeds(per_seed)
    attacks = list(per_seed[0]["clients"][next(iter(per_seed[0]["clients"]))]["attacks"])
    lines = [f"# Defenses in a federation: {scenario}", "",
             f"`python experiments/defense_tradeoff/run.py {scenario}` (config "
             f"`experiments/defense_tradeoff/{scenario}.toml`), seeds {', '.join(map(str, seeds))}; "
             "mean ± standard deviation over seeds. Each row is one client with its own defense; "
             "accuracies are its last upload's, on its own records (train) and the test pool; AUCs are "
             "the server's attacks on that upload (members: the client's records; non-members: held "
             "out). DP epsilons marked * do not cover the client (its defense reads the records "
             "outside the noisy steps).", "",
             "| client, defense | formal eps | train acc | test acc | gap | " + " | ".join(f"AUC {a}" for a in attacks) + " |",
             "|---|---|---|---|---|" + "---|" * len(attacks)]
    for client, row in table.items():
        lines.append(f"| {client} | {epsilon_cell(row)} | {cell(row['train_accuracy'])} | {cell(row['test_accuracy'])} | "
                     f"{cell(row['generalization_gap'])} | " + " | ".join(cell(row[a]) for a in attacks) + " |")
    glob = [s["global"] for s in per_seed]
    querier = [s["querier"] for s in per_seed]
    lines += ["", f"Final global model: test accuracy {cell([s['final_test_accuracy'] for s in per_seed])}; "
              "server on the final model: " + ", ".join(f"{a} {cell([g['attacks'][a] for g in glob])}"
                                                      for a in glob[0]["attacks"]) + "; querier (release "
              "defense on): " + ", ".join(f"{a} {cell([q['attacks'][a] for q in querier])}"
                                         for a in querier[0]["attacks"]) + ".", "",
              "## Seed 000's claim", "", *verdict(table, attacks), ""]
    return "\n".join(lines)


def plot(scenario: str, per_seed: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = across_seeds(per_seed)
    attacks = list(per_seed[0]["clients"][next(iter(per_seed[0]["clients"]))]["attacks"])
    figure, axes = plt.subplots(1, len(attacks), figsize=(4.2 * len(attacks), 4.4), sharey=True)
    families = sorted({client.split(" ")[1] for client in table})
    colours = {family: plt.cm.tab20(i % 20) for i, family in enumerate(families)}
    for axis, attack in zip(axes, attacks):
        for family in families:
            rows = [row for client, row in table.items() if client.split(" ")[1] == family]
            axis.errorbar([mean_sd(r[attack])[0] for r in rows], [mean_sd(r["test_accuracy"])[0] for r in rows],
                          xerr=[mean_sd(r[attack])[1] for r in rows], yerr=[mean_sd(r["test_accuracy"])[1] for r in rows],
                          fmt="o", ms=4, lw=0.7, color=colours[family], label=family)
        axis.axvline(AUC_GOAL, color="k", ls="--", lw=0.7)
        axis.set(xlabel=f"{attack} AUC", title=attack)
    axes[0].set_ylabel("test accuracy of the client's upload")
    axes[-1].legend(fontsize=6, loc="lower right")
    figure.suptitle(f"privacy-utility per defense setting ({scenario}; mean ± sd over seeds)")
    figure.tight_layout()
    figure.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", help="digits, fashion-mnist or cifar10-gpu")
    parser.add_argument("--seeds", default="0,1,2", help="comma list of seeds (default 0,1,2)")
    args = parser.parse_args()
    seeds = [int(seed) for seed in args.seeds.split(",")]
    out = RESULTS / args.scenario
    out.mkdir(parents=True, exist_ok=True)
    per_seed, timings = [], []
    for seed in seeds:
        results = run_once(args.scenario, seed)
        per_seed.append(summarize(results))
        timings.append(results["timing"])
    (out / "summary.json").write_text(json.dumps({"seeds": seeds, "runs": per_seed}, indent=1) + "\n")
    (out / "summary.md").write_text(markdown(args.scenario, seeds, per_seed))
    plot(args.scenario, per_seed, out / "tradeoff.png")
    phases = sorted({phase for timing in timings for phase in timing})
    (out / "cost.md").write_text("# Wall time per run (seconds; varies from run to run)\n\n| seed | "
                                 + " | ".join(phases) + " |\n|---|" + "---|" * len(phases) + "\n"
                                 + "".join(f"| {seed} | " + " | ".join(f"{t.get(p, 0):.1f}" for p in phases) + " |\n"
                                           for seed, t in zip(seeds, timings)))
    print((out / "summary.md").read_text())


if __name__ == "__main__":
    main()
