"""Inversion experiments (issue 10): how recognisable a client's images are from what it sends.

`python experiments/inversion/run.py gradient DATASET [--seeds 0,1,2]`
    The server inverts one client's first update (at the initial model, as in the literature).
    Grid: records per client n in (1, 4, 16) x client kind (FedSGD: one full-batch step;
    FedAvg: 1 or 2 local epochs of batches of ceil(n/2)); then at n = 4 the same client under
    its local defense (none, dpsgd at epsilon 1 and 8, distill, and diffusion-mixup on digits)
    for FedSGD and FedAvg 1 epoch. The attacker knows n and the local plan, never the defense.
    Attacks: inverting-gradients everywhere, dlg and idlg on the FedSGD cells.
`python experiments/inversion/run.py model DATASET [--seeds 0,1,2]`
    Seed 004's table: a victim client trains on its records for several rounds, with and
    without the decoy defense (protected class 0, decoy class 1); mi-face and gmi invert class 0
    from its model; an evaluation classifier trained on records neither saw judges the images.

Every record pool is a seeded, disjoint, label-stratified draw (PROTOCOL.md's evaluation sets:
the client's records are the ground truth; the evaluator and the adversary's public pool never
overlap them). Results go to `experiments/results/inversion/DATASET/{gradient,model}.{json,md}`
with image grids of seed 0; timings go to `{gradient,model}-cost.md` only, so a rerun on this machine
reproduces the rest byte for byte.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedmia.data.datasets import load_dataset
from fedmia.defenses import DefenseSpec
from fedmia.defenses.base import ClientData, PrepareContext, RoundContext
from fedmia.defenses.cache import PreparationCache
from fedmia.image_grid import pair_grid
from fedmia.inversion import INVERSIONS
from fedmia.inversion.base import ClientUpdate, ModelAccess
from fedmia.inversion.judge import judge_inversion, train_evaluator
from fedmia.inversion.metrics import score_reconstruction
from fedmia.models import build_model
from fedmia.seeding import round_seed
from fedmia.training import TrainingPlan, accuracy

HERE = Path(__file__).parent
RESULTS = HERE.parent / "results" / "inversion"
DIGITS = 4
RECORDS = (1, 4, 16)
#: (name, local epochs): FedSGD is one full-batch step.
CLIENT_KINDS = (("fedsgd", 0), ("fedavg-1", 1), ("fedavg-2", 2))
DEFENSE_RECORDS = 4
DEFENSES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("none", "none", {}),
    ("dpsgd eps 8", "dpsgd", {"epsilon": 8.0}),
    ("dpsgd eps 1", "dpsgd", {"epsilon": 1.0}),
    ("distill", "distill", {"teacher_epochs": 20}),
    ("diffusion-mixup", "diffusion-mixup", {}),
)
#: Diffusion training takes minutes per client at 28x28 on one core (benchmarks/results/diffusion.json).
DIFFUSION_DATASETS = ("digits",)
PUBLIC_SIZE = 300
#: Model inversion: the victim's records, the adversary's public pool, the evaluator's records
#: and the victim's test records, per dataset (disjoint draws).
MODEL_POOLS = {"digits": (600, 400, 400, 300), "fashion-mnist": (3000, 2000, 5000, 2000)}
VICTIM_ROUNDS = 3
PROTECTED, DECOY = 0, 1
INVERTED = 16
VICTIM_DEFENSES: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("none", "none", {}),
    ("decoy (seed 004)", "decoy", {"protected_class": PROTECTED, "decoy_class": DECOY}),
)


def draw(labels: np.ndarray, sizes: list[int], seed: int) -> list[np.ndarray]:
    """Disjoint seeded draws of the given sizes from the pool."""
    order = np.random.default_rng(seed).permutation(len(labels))
    cuts = np.cumsum([0, *sizes])
    return [np.sort(order[a:b]) for a, b in zip(cuts[:-1], cuts[1:])]


def plan_for(kind_epochs: int, records: int) -> TrainingPlan:
    """The product's local plan (lr, momentum), with one full-batch step for FedSGD (0)."""
    if kind_epochs == 0:
        return TrainingPlan(local_epochs=1, batch_size=0)
    return TrainingPlan(local_epochs=kind_epochs, batch_size=max(1, math.ceil(records / 2)))


def client_round(model: torch.nn.Module, data: ClientData, plan: TrainingPlan, defense: str,
                 params: dict[str, Any], seed: int, cache: PreparationCache) -> dict[str, torch.Tensor]:
    """One round of the client's local training under its defense; the upload's weights."""
    built = DefenseSpec(defense, params).build()
    built.prepare(data, PrepareContext(plan, seed, cache, lambda: build_model("cnn", data.images.shape[1:],
                                                                              data.num_classes, seed=seed)))
    torch.manual_seed(seed)
    built.train_round(model, data, RoundContext(1, 1, plan, seed))
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def invert(attack: str, update: ClientUpdate, truth: tuple[np.ndarray, np.ndarray], seed: int
           ) -> tuple[dict[str, Any], float, np.ndarray, np.ndarray]:
    reconstruction = INVERSIONS[attack]().reconstruct(update, seed)
    scored = score_reconstruction(reconstruction.images, reconstruction.labels, *truth)
    rounded = {key: (None if value is None else round(value, DIGITS)) for key, value in scored.metrics.to_dict().items()}
    return rounded, reconstruction.seconds, reconstruction.images, truth[0][scored.paired]


def gradient_cell(dataset: Any, records: int, kind: tuple[str, int], defense: tuple[str, str, dict[str, Any]],
                  attacks: list[str], seed: int, cache: PreparationCache, dp_form: bool) -> dict[str, Any]:
    """One client's first update inverted by each attack. `dp_form`: the DP-compatible model
    (GroupNorm), which a federation uses as soon as one client runs DP-SGD."""
    own, public = draw(dataset.labels, [records, PUBLIC_SIZE], round_seed(seed, records))
    data = ClientData(0, dataset.images[own], dataset.labels[own], dataset.num_classes,
                      dataset.images[public], dataset.labels[public])
    plan = plan_for(kind[1], records)
    sent = build_model("cnn", dataset.input_shape, dataset.num_classes, dp_compatible=dp_form, seed=seed)
    model = build_model("cnn", dataset.input_shape, dataset.num_classes, dp_compatible=dp_form, seed=seed)
    returned = client_round(model, data, plan, defense[1], defense[2], seed, cache)
    update = ClientUpdate(sent, returned, records, plan, dataset.num_classes, dataset.input_shape)
    cell: dict[str, Any] = {"records": records, "client": kind[0], "defense": defense[0], "dp_form": dp_form,
                            "local_steps": update.steps, "attacks": {}, "seconds": {}, "grids": {}}
    for attack in attacks:
        metrics, seconds, images, truth = invert(attack, update, (data.images, data.labels), seed)
        cell["attacks"][attack], cell["seconds"][attack] = metrics, seconds
        cell["grids"][attack] = (images, truth)
    return cell


def gradient_cells(dataset: Any, seed: int, cache: PreparationCache) -> list[dict[str, Any]]:
    """The grid without defenses (default model), then the defenses at DEFENSE_RECORDS."""
    cells = []
    for records in RECORDS:
        for kind in CLIENT_KINDS:
            attacks = ["inverting-gradients", *(["dlg", "idlg"] if kind[1] == 0 else [])]
            cells.append(gradient_cell(dataset, records, kind, DEFENSES[0], attacks, seed, cache, False))
            print(f"  seed {seed}: n={records} {kind[0]} done", flush=True)
    for defense in DEFENSES:
        if defense[1] == "diffusion-mixup" and dataset.name not in DIFFUSION_DATASETS:
            continue
        for kind in CLIENT_KINDS[:2]:
            cells.append(gradient_cell(dataset, DEFENSE_RECORDS, kind, defense, ["inverting-gradients"],
                                       seed, cache, True))
            print(f"  seed {seed}: {defense[0]} {kind[0]} done", flush=True)
    return cells


def spread(values: list[float | None]) -> dict[str, float | None]:
    present = [v for v in values if v is not None]
    if not present:
        return {"mean": None, "sd": None}
    return {"mean": round(statistics.fmean(present), DIGITS),
            "sd": round(statistics.stdev(present), DIGITS) if len(present) > 1 else 0.0}


def cell_key(cell: dict[str, Any]) -> tuple[str, int, str, bool]:
    return cell["defense"], cell["records"], cell["client"], cell.get("dp_form", False)


def summarize_gradient(per_seed: dict[int, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per cell and attack: PSNR, SSIM, MSE and label accuracy, mean and sd over seeds."""
    first = next(iter(per_seed.values()))
    rows = []
    for position, cell in enumerate(first):
        cells = [cells[position] for cells in per_seed.values()]
        for attack in cell["attacks"]:
            metrics = {name: spread([c["attacks"][attack][name] for c in cells])
                       for name in ("psnr", "ssim", "mse", "label_accuracy")}
            rows.append({"defense": cell["defense"], "records": cell["records"], "client": cell["client"],
                         "local_steps": cell["local_steps"], "model": "dp-compatible" if cell["dp_form"] else "default",
                         "attack": attack, **metrics})
    return rows


def gradient_markdown(dataset: str, rows: list[dict[str, Any]], seeds: list[int]) -> str:
    def cell(value: dict[str, float | None], digits: int = 2) -> str:
        return "n/a" if value["mean"] is None else f"{value['mean']:.{digits}f} ± {value['sd']:.{digits}f}"

    lines = [f"# Gradient inversion on {dataset}", "",
             f"Seeds {', '.join(map(str, seeds))} (mean ± sd). One client's first update at the initial "
             "model; the attacker knows the record count and the local plan, not the defense. PSNR in dB "
             "with data range 1; each reconstruction paired with a distinct record by optimal assignment.",
             "Command: `python experiments/inversion/run.py gradient " + dataset + "`.", "",
             "| defense | model | records | client | local steps | attack | PSNR | SSIM | label acc |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['defense']} | {r['model']} | {r['records']} | {r['client']} | {r['local_steps']} | {r['attack']} | "
              f"{cell(r['psnr'], 1)} | {cell(r['ssim'])} | {cell(r['label_accuracy'])} |" for r in rows]
    return "\n".join(lines) + "\n"


def save_grids(folder: Path, cells: list[dict[str, Any]]) -> None:
    """Seed 0's reconstructions above their paired records, for the inverting-gradients cells."""
    for cell in cells:
        images, truth = cell["grids"]["inverting-gradients"]
        model = "-dp-compatible" if cell["dp_form"] else ""
        name = f"{cell['defense'].replace(' ', '-')}{model}-n{cell['records']}-{cell['client']}.png"
        pair_grid(images, truth, [""] * len(images),
                  f"inverting-gradients, {cell['defense']}, {cell['records']} records, {cell['client']}",
                  folder / "grids" / name)


def over_seeds(dataset_name: str, seeds: list[int], cells_of: Callable[[Any, int, PreparationCache], Any]
               ) -> tuple[Path, dict[int, Any], dict[int, float]]:
    """`cells_of(dataset, seed, cache)` for every seed, with one preparation cache for all, and
    each seed's wall time; the results folder, made ready."""
    dataset = load_dataset(dataset_name)
    folder = RESULTS / dataset_name
    (folder / "grids").mkdir(parents=True, exist_ok=True)
    outputs, seconds = {}, {}
    with tempfile.TemporaryDirectory() as cache_dir:
        cache = PreparationCache(cache_dir)
        for seed in seeds:
            started = time.perf_counter()
            outputs[seed] = cells_of(dataset, seed, cache)
            seconds[seed] = time.perf_counter() - started
    return folder, outputs, seconds


def write_results(folder: Path, part: str, seeds: list[int], rows: list[dict[str, Any]],
                  per_seed: dict[int, list[dict[str, Any]]], markdown: str) -> None:
    """`part`.json (summary rows and every seed's cells, timings left out) and `part`.md."""
    (folder / f"{part}.json").write_text(json.dumps({"seeds": seeds, "rows": rows, "per_seed": {
        str(seed): [{k: v for k, v in c.items() if k != "seconds"} for c in cells]
        for seed, cells in per_seed.items()}}, indent=1) + "\n")
    (folder / f"{part}.md").write_text(markdown)


def run_gradient(dataset_name: str, seeds: list[int]) -> None:
    folder, outputs, seconds = over_seeds(dataset_name, seeds, gradient_cells)
    save_grids(folder, outputs[seeds[0]])
    per_seed = {seed: [{k: v for k, v in c.items() if k != "grids"} for c in cells] for seed, cells in outputs.items()}
    rows = summarize_gradient(per_seed)
    write_results(folder, "gradient", seeds, rows, per_seed, gradient_markdown(dataset_name, rows, seeds))
    attack_seconds = [s for cells in per_seed.values() for c in cells for s in c["seconds"].values()]
    write_cost(folder, "gradient", seconds, attack_seconds)


def write_cost(folder: Path, part: str, seconds: dict[int, float], attack_seconds: list[float]) -> None:
    """Timings, kept apart from the results so a rerun reproduces those byte for byte."""
    (folder / f"{part}-cost.md").write_text(
        f"# {part}: cost on a 2-core CPU\n\nwall time per seed: "
        + ", ".join(f"seed {s} {v:.0f} s" for s, v in seconds.items())
        + f"; per attack: mean {statistics.fmean(attack_seconds):.1f} s, max {max(attack_seconds):.1f} s\n")


def train_victim(dataset: Any, pools: list[np.ndarray], defense: tuple[str, str, dict[str, Any]], seed: int,
                 cache: PreparationCache) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The victim client's model after VICTIM_ROUNDS rounds of local training under `defense`
    (a one-client federation: what the server, or anyone holding the model, sees)."""
    own, public, _, test = pools
    data = ClientData(0, dataset.images[own], dataset.labels[own], dataset.num_classes,
                      dataset.images[public], dataset.labels[public])
    plan = TrainingPlan()
    model = build_model("cnn", dataset.input_shape, dataset.num_classes, seed=seed)
    started = time.perf_counter()
    state: dict[str, Any] | None = None
    for server_round in range(1, VICTIM_ROUNDS + 1):
        built = DefenseSpec(defense[1], defense[2]).build()
        built.prepare(data, PrepareContext(plan, seed, cache, lambda: build_model(
            "cnn", dataset.input_shape, dataset.num_classes, seed=seed)))
        if state is not None:
            built.load_state_dict(state)
        torch.manual_seed(round_seed(seed, server_round))
        built.train_round(model, data, RoundContext(server_round, VICTIM_ROUNDS, plan, round_seed(seed, server_round)))
        state = built.state_dict()
    test_images, test_labels = dataset.images[test], dataset.labels[test]
    protected = test_labels == PROTECTED
    return model.eval(), {"test_accuracy": round(accuracy(model, test_images, test_labels), DIGITS),
                          "protected_class_accuracy": round(accuracy(model, test_images[protected],
                                                                     test_labels[protected]), DIGITS),
                          "training_seconds": time.perf_counter() - started}


def model_cells(dataset: Any, seed: int, cache: PreparationCache) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    pools = draw(dataset.labels, list(MODEL_POOLS[dataset.name]), round_seed(seed, 4))
    own, public, judged, _ = pools
    evaluator = train_evaluator(dataset.images[judged], dataset.labels[judged], dataset.num_classes,
                                round_seed(seed, 5))
    private = dataset.images[own][dataset.labels[own] == PROTECTED]
    cells, grids = [], {}
    for defense in VICTIM_DEFENSES:
        victim, utility = train_victim(dataset, pools, defense, seed, cache)
        access = ModelAccess(victim, dataset.images[public], dataset.labels[public], dataset.num_classes, cache)
        for attack in ("mi-face", "gmi"):
            reconstruction = INVERSIONS[attack]().reconstruct(access, PROTECTED, INVERTED, round_seed(seed, 6))
            metrics = judge_inversion(evaluator, reconstruction.images, PROTECTED, private).to_dict()
            cells.append({"defense": defense[0], "attack": attack,
                          **{k: v for k, v in utility.items() if k != "training_seconds"},
                          **{k: round(v, DIGITS) if isinstance(v, float) else v for k, v in metrics.items()},
                          "seconds": {"attack": reconstruction.seconds, "victim": utility["training_seconds"]}})
            grids[(defense[0], attack)] = reconstruction.images
            print(f"  seed {seed}: {defense[0]} {attack} done", flush=True)
    return cells, grids


def model_markdown(dataset: str, rows: list[dict[str, Any]], seeds: list[int]) -> str:
    def cell(value: dict[str, float | None], digits: int = 3) -> str:
        return "n/a" if value["mean"] is None else f"{value['mean']:.{digits}f} ± {value['sd']:.{digits}f}"

    lines = [f"# Model inversion on {dataset}, with and without seed 004's decoy defense", "",
             f"Seeds {', '.join(map(str, seeds))} (mean ± sd). The victim client trains {VICTIM_ROUNDS} rounds "
             f"on its records; the adversary inverts class {PROTECTED} ({INVERTED} images) from its model, "
             f"with a public pool that never holds class {PROTECTED} for the GAN; an evaluation classifier "
             "trained on records neither saw judges them (PROTOCOL.md, Inversion). The decoy defense "
             f"protects class {PROTECTED} with class {DECOY} as its decoy.",
             "Command: `python experiments/inversion/run.py model " + dataset + "`.", "",
             "| defense | attack | victim test acc | victim acc on protected class | attack acc | "
             "feature distance | Frechet |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['defense']} | {r['attack']} | {cell(r['test_accuracy'])} | {cell(r['protected_class_accuracy'])} | "
              f"{cell(r['attack_accuracy'])} | {cell(r['feature_distance'], 2)} | {cell(r['frechet'], 1)} |"
              for r in rows]
    return "\n".join(lines) + "\n"


def run_model(dataset_name: str, seeds: list[int]) -> None:
    folder, outputs, seconds = over_seeds(dataset_name, seeds, model_cells)
    for (defense, attack), images in outputs[seeds[0]][1].items():
        pair_grid(images[: INVERTED // 2], images[INVERTED // 2:], [""] * (INVERTED // 2),
                  f"{attack} class {PROTECTED}, victim defense: {defense}",
                  folder / "grids" / f"model-{attack}-{defense.split()[0]}.png")
    per_seed = {seed: cells for seed, (cells, _) in outputs.items()}
    keys = ("test_accuracy", "protected_class_accuracy", "attack_accuracy", "feature_distance", "frechet")
    rows = [{"defense": cell["defense"], "attack": cell["attack"],
             **{key: spread([cells[i][key] for cells in per_seed.values()]) for key in keys}}
            for i, cell in enumerate(per_seed[seeds[0]])]
    write_results(folder, "model", seeds, rows, per_seed, model_markdown(dataset_name, rows, seeds))
    write_cost(folder, "model", seconds, [c["seconds"]["attack"] for cells in per_seed.values() for c in cells])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=("gradient", "model"))
    parser.add_argument("dataset", choices=("digits", "fashion-mnist"))
    parser.add_argument("--seeds", default="0,1,2", help="comma list of seeds (default 0,1,2)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    seeds = [int(seed) for seed in args.seeds.split(",")]
    (run_gradient if args.part == "gradient" else run_model)(args.dataset, seeds)


if __name__ == "__main__":
    main()
