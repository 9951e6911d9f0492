"""ladp vs flat dpsgd at equal epsilon, on the same data, model and seed (digits, centralized).

One client holds every member of the privacy split; each defense trains the DP-compatible cnn for
ROUNDS rounds of one local epoch under the same (epsilon, delta) budget. Reported: test accuracy
and the loss attack's AUC (members vs equally many held-out non-members).
Run: `python experiments/ladp_vs_dpsgd.py` (a few minutes on 2 cores).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fedmia.attacks.metric import LossAttack
from fedmia.data import PartitionSpec, load_dataset, make_privacy_split
from fedmia.defenses import DefenseSpec, ClientData, RoundContext
from fedmia.metrics import membership_metrics
from fedmia.models import build_model
from fedmia.training import TrainingPlan, accuracy, predict_logits

EPSILONS = (1.0, 4.0, 8.0)
ROUNDS = 10
SEED = 0
PLAN = TrainingPlan(local_epochs=1, batch_size=64, lr=0.1)
RESULTS = Path(__file__).parent / "results"


def train_and_measure(defense_name: str, epsilon: float, members: ClientData, test, nonmembers) -> dict:
    model = build_model("cnn", members.images.shape[1:], 10, dp_compatible=True, seed=SEED)
    defense = DefenseSpec(defense_name, {"epsilon": epsilon}).build()
    for server_round in range(1, ROUNDS + 1):
        report = defense.train_round(model, members, RoundContext(server_round, ROUNDS, PLAN, SEED + server_round))
    size = len(nonmembers[1])
    member_logits = predict_logits(model, members.images[:size])
    nonmember_logits = predict_logits(model, nonmembers[0])
    scores = np.concatenate([LossAttack.signal(member_logits, members.labels[:size]),
                             LossAttack.signal(nonmember_logits, nonmembers[1])])
    labels = np.concatenate([np.ones(size), np.zeros(size)])
    attack = membership_metrics(scores, labels, report.privacy.delta)
    return {"defense": defense_name, "epsilon_target": epsilon, "epsilon_spent": report.privacy.epsilon,
            "sigma_or_sigma_eff": report.privacy.noise_multiplier,
            "test_accuracy": accuracy(model, *test), "loss_attack_auc": attack.auc,
            "eps_lower_bound": attack.eps_lower_bound}


def main() -> None:
    digits = load_dataset("digits")
    split = make_privacy_split(digits.labels, 1, PartitionSpec.parse("iid"), SEED)
    members = ClientData(0, digits.images[split.clients[0]], digits.labels[split.clients[0]], 10)
    test = (digits.images[split.test], digits.labels[split.test])
    nonmembers = (digits.images[split.nonmembers], digits.labels[split.nonmembers])
    rows = [train_and_measure(name, eps, members, test, nonmembers)
            for eps in EPSILONS for name in ("dpsgd", "ladp")]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ladp_vs_dpsgd.json").write_text(json.dumps(rows, indent=2))
    for row in rows:
        print(f"eps {row['epsilon_target']:4.1f}  {row['defense']:6s}  spent {row['epsilon_spent']:.2f}  "
              f"test acc {row['test_accuracy']:.3f}  loss AUC {row['loss_attack_auc']:.3f}")


if __name__ == "__main__":
    main()
