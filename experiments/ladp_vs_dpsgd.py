"""ladp vs flat dpsgd at equal epsilon, over several seeds (digits, one client, centralized).

Per seed: the run's privacy split (`make_privacy_split`, one client holding every member), the
DP-compatible cnn with that seed's initial weights, ROUNDS rounds of one local epoch under the
same (epsilon, delta) budget, seeded per round as `simulate` seeds its clients. Evaluation as
`simulate`'s `global` scope (PROTOCOL.md): the loss attack on the seeded, per-class balanced set
of members vs held-out non-members; test accuracy on the test pool; train accuracy on the
members after training, and the generalization gap. Reported per seed, and as mean and
standard deviation over SEEDS.

Run: `python experiments/ladp_vs_dpsgd.py` (about two minutes on 2 cores). It rewrites
experiments/results/ladp_vs_dpsgd.json and .md; a rerun reproduces both byte for byte.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import torch

from fedmia.attacks.metric import LossAttack
from fedmia.data import PartitionSpec, load_dataset, make_privacy_split
from fedmia.defenses import ClientData, DefenseSpec, RoundContext
from fedmia.evaluation import balanced_eval_set
from fedmia.metrics import membership_metrics
from fedmia.models import build_model
from fedmia.seeding import round_seed
from fedmia.training import TrainingPlan, accuracy, predict_logits

EPSILONS = (1.0, 4.0, 8.0)
DEFENSES = ("dpsgd", "ladp")
SEEDS = (0, 1, 2, 3, 4)
ROUNDS = 10
PLAN = TrainingPlan(local_epochs=1, batch_size=64, lr=0.1)
#: Seed key of the evaluation set, as in `fedmia.evaluation` (global scope).
EVAL_SET_KEY = 1_000_004
RESULTS = Path(__file__).parent / "results"
DIGITS = 4


def train_and_measure(defense_name: str, epsilon: float, seed: int) -> dict:
    # One thread: parallel float reductions sum in another order, and the numbers must not
    # depend on the machine's core count.
    torch.set_num_threads(1)
    digits = load_dataset("digits")
    split = make_privacy_split(digits.labels, 1, PartitionSpec.parse("iid"), seed)
    members = split.clients[0]
    client = ClientData(0, digits.images[members], digits.labels[members], digits.num_classes)
    model = build_model("cnn", digits.input_shape, digits.num_classes, dp_compatible=True, seed=seed)
    defense = DefenseSpec(defense_name, {"epsilon": epsilon}).build()
    for server_round in range(1, ROUNDS + 1):
        torch.manual_seed(round_seed(seed, 0, server_round))
        context = RoundContext(server_round, ROUNDS, PLAN, round_seed(seed, 0, server_round))
        report = defense.train_round(model, client, context)
    indices, membership = balanced_eval_set(members, split.nonmembers, digits.labels,
                                            np.random.default_rng(round_seed(seed, EVAL_SET_KEY)))
    scores = LossAttack.signal(predict_logits(model, digits.images[indices]), digits.labels[indices])
    attack = membership_metrics(scores, membership, report.privacy.delta)
    test_accuracy = accuracy(model, digits.images[split.test], digits.labels[split.test])
    train_accuracy = accuracy(model, client.images, client.labels)
    return {"defense": defense_name, "epsilon_target": epsilon, "seed": seed, "n_train": len(client),
            "epsilon_spent": report.privacy.epsilon, "delta": report.privacy.delta,
            "sigma_or_sigma_eff": report.privacy.noise_multiplier, "steps": report.privacy.steps,
            "test_accuracy": test_accuracy, "train_accuracy": train_accuracy,
            "generalization_gap": train_accuracy - test_accuracy,
            "loss_attack_auc": attack.auc, "loss_attack_tpr_at_1pct_fpr": attack.tpr_at_1pct_fpr,
            "n_members": attack.n_members, "n_nonmembers": attack.n_nonmembers}


def spread(rows: list[dict], key: str) -> str:
    values = [row[key] for row in rows]
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def markdown(rows: list[dict]) -> str:
    first = rows[0]
    lines = [
        "# ladp vs dpsgd at equal epsilon (digits, one client, cnn)",
        "",
        f"`python experiments/ladp_vs_dpsgd.py`: seeds {', '.join(map(str, SEEDS))}; per seed, one",
        f"client holds every member of the seed's privacy split ({first['n_train']} images) and trains",
        f"{ROUNDS} rounds of one epoch, batch {PLAN.batch_size}, lr {PLAN.lr}. Loss attack on the seeded,",
        f"per-class balanced set ({first['n_members']} members vs {first['n_nonmembers']} held-out",
        f"non-members). Mean ± standard deviation over the {len(SEEDS)} seeds; per-seed rows in",
        "ladp_vs_dpsgd.json.",
        "",
        "| epsilon | defense | epsilon spent | sigma (eff) | test accuracy | generalization gap | loss-attack AUC |",
        "|---|---|---|---|---|---|---|",
    ]
    for epsilon in EPSILONS:
        for name in DEFENSES:
            group = [r for r in rows if r["epsilon_target"] == epsilon and r["defense"] == name]
            lines.append(f"| {epsilon:g} | {name} | {max(r['epsilon_spent'] for r in group):.2f} | "
                         f"{group[0]['sigma_or_sigma_eff']:.3f} | {spread(group, 'test_accuracy')} | "
                         f"{spread(group, 'generalization_gap')} | {spread(group, 'loss_attack_auc')} |")
    return "\n".join(lines + outcome(rows)) + "\n"


def mean_of(rows: list[dict], epsilon: float, name: str, key: str) -> float:
    return statistics.mean(r[key] for r in rows if r["epsilon_target"] == epsilon and r["defense"] == name)


def outcome(rows: list[dict]) -> list[str]:
    """The conclusion, computed from the rows so that it always matches the table."""
    losses = [100 * (mean_of(rows, e, "dpsgd", "test_accuracy") - mean_of(rows, e, "ladp", "test_accuracy"))
              for e in EPSILONS]
    aucs = [r["loss_attack_auc"] for r in rows]
    verdict = (f"ladp's mean test accuracy is {min(losses):.1f}-{max(losses):.1f} points below dpsgd's at "
               "every budget" if min(losses) > 0 else
               "ladp does not lose at every budget: " + ", ".join(
                   f"epsilon {e:g}: {-loss:+.1f} points" for e, loss in zip(EPSILONS, losses)))
    return ["", "## Outcome", "",
            f"Same epsilon, same sigma_eff, same steps: {verdict}; every loss-attack AUC lies in "
            f"{min(aucs):.3f}-{max(aucs):.3f}, near chance for both.",
            "Why: with sigma_eff fixed by the budget, a smaller multiplier on some layers forces larger",
            "ones on the rest, and the less sensitive layers' clipping norm (5 vs 1) makes their absolute",
            "noise sigma_l C_l 2.5 times the sensitive layers' even at half the multiplier; Fisher scores",
            "on synthetic inputs do not recover that loss. The seed's claim of a gain rests on subtracting",
            "per-layer epsilons, which is not a valid accounting; with a valid one, the layered scheme",
            "buys no measurable privacy for the accuracy it costs."]


def rounded(value):
    return round(value, DIGITS) if isinstance(value, float) else value


def main() -> None:
    rows = [{k: rounded(v) for k, v in train_and_measure(name, epsilon, seed).items()}
            for epsilon in EPSILONS for name in DEFENSES for seed in SEEDS]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ladp_vs_dpsgd.json").write_text(json.dumps(rows, indent=2) + "\n")
    (RESULTS / "ladp_vs_dpsgd.md").write_text(markdown(rows))
    print(markdown(rows))


if __name__ == "__main__":
    main()
