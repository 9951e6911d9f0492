"""The inversion phase of a run: every configured reconstruction attack on what its adversary
sees, scored against the records it stands for, saved so `fedmia check` can recompute it.

- Gradient inversion belongs to the server: for every client that uploaded, it attacks the
  client's last upload against the global model of the round before (the pair the membership
  scope `client:k` attacks), reconstructing as many images as the client reported records
  (at most MAX_IMAGES). The ground truth is the client's own records.
- Model inversion runs on the final global model: by the server (scope `global`, with the
  adversary's population as its public pool) and by each malicious client (scope
  `malicious:j`, with its own records added to the pool), once per protected class, whose
  records are never in the pool. The ground truth is the members of that class (for a
  malicious client, the other clients' members). An evaluation classifier trained on the test
  pool, which no target ever trains on, judges the images (docs/PROTOCOL.md, Inversion).

results.json gets `inversion`: the evaluator's accuracy and one entry per (attack, scope,
class) with its `kind`; `reconstructions/` gets the arrays (npz), an image grid (png) per
entry and the evaluator's weights.
"""

from __future__ import annotations

import shutil
import time
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from safetensors.torch import load_file, save_file
from torch import nn

from fedmia.adversary.scopes import GLOBAL_SCOPE, client_scope, malicious_scope
from fedmia.adversary.threats import SERVER, malicious_clients
from fedmia.adversary.views import load
from fedmia.attacks.spec import INVERSION, AttackSpec, parse_attack_specs
from fedmia.defenses.cache import PreparationCache
from fedmia.errors import FedmiaError, one_line
from fedmia.evaluation import last_client_reports, one_torch_thread
from fedmia.image_grid import pair_grid
from fedmia.inversion.base import (
    GRADIENT_INVERSION,
    MODEL_INVERSION,
    ClientUpdate,
    GradientInversionAttack,
    ModelAccess,
    ModelInversionAttack,
)
from fedmia.inversion.judge import EvaluatorCNN, judge_inversion, train_evaluator
from fedmia.inversion.metrics import pairwise_mse, score_reconstruction
from fedmia.progress import Progress, SilentProgress
from fedmia.run import PreparedRun
from fedmia.rundir import REATTACK, FINAL_GLOBAL_MODEL, RunDirectory, client_model_name, file_safe, global_round_name
from fedmia.seeding import round_seed
from fedmia.timing import RunTimer
from fedmia.training import accuracy

#: Most images one gradient inversion reconstructs: past it, the client's upload is skipped.
MAX_IMAGES = 64
#: Images each model inversion produces per protected class.
MODEL_INVERSION_IMAGES = 16
EVALUATOR_FILE = "evaluator.safetensors"
FOLDER = "reconstructions"
#: Seed keys of the phase's parts (see `fedmia.seeding.round_seed`).
EVALUATOR_KEY, GRADIENT_KEY, MODEL_KEY = 8_000_001, 8_000_002, 8_000_003


@dataclass(frozen=True)
class InversionTarget:
    """One thing to reconstruct: a client's upload (gradient inversion) or a protected class
    of the final model (model inversion), for the adversary that sees it."""

    spec: AttackSpec
    scope: str
    adversary: str
    client: int | None = None
    upload_round: int = 0
    protected_class: int | None = None

    @property
    def file_stem(self) -> str:
        suffix = "" if self.protected_class is None else f"__class-{self.protected_class}"
        return f"{file_safe(self.scope)}__{file_safe(self.spec.label)}{suffix}"


def inversion_specs(run: PreparedRun) -> tuple[AttackSpec, ...]:
    return parse_attack_specs(run.config.inversions, "--inversions", INVERSION)


def _runs(spec: AttackSpec, adversary: str) -> bool:
    return not spec.adversaries or adversary in spec.adversaries


def inversion_targets(run: PreparedRun, reports: dict[int, dict[str, Any]]) -> list[InversionTarget]:
    """Every (attack, scope[, class]) of the phase, in a fixed order: gradient inversions by
    client, then model inversions by adversary and class."""
    config = run.config
    targets = []
    for spec in inversion_specs(run):
        if spec.build().kind == GRADIENT_INVERSION:
            if _runs(spec, SERVER):
                targets += [InversionTarget(spec, client_scope(client), SERVER, client, reports[client]["round"])
                            for client in sorted(reports)]
            continue
        scopes = [(GLOBAL_SCOPE, SERVER, None)] + [(malicious_scope(j), f"client:{j}", j)
                                                    for j in malicious_clients(config.roles)]
        targets += [InversionTarget(spec, scope, adversary, client, protected_class=c)
                    for scope, adversary, client in scopes if _runs(spec, adversary)
                    for c in config.protected_classes]
    return targets


def check_protected_classes(run: PreparedRun) -> None:
    """Every protected class is a class of the dataset (one with fewer than two private records
    is skipped, and says so, where it is inverted)."""
    for c in run.config.protected_classes:
        if c >= run.dataset.num_classes:
            raise FedmiaError(f"protected class {c} is not a class of {run.config.dataset} "
                              f"(0..{run.dataset.num_classes - 1}); fix --protected-classes")


def client_update(run: PreparedRun, target: InversionTarget, report: dict[str, Any]) -> ClientUpdate:
    assert target.client is not None
    returned = run.rundir.load_model(client_model_name(target.client))
    return ClientUpdate(load(run, global_round_name(target.upload_round - 1)), returned,
                        int(report["num_examples"]), run.plan, run.dataset.num_classes,
                        run.dataset.input_shape)


def invert_update(run: PreparedRun, target: InversionTarget, report: dict[str, Any]) -> dict[str, Any]:
    """Gradient inversion of one client's upload, scored against its records."""
    assert target.client is not None
    update = client_update(run, target, report)
    entry = {"kind": GRADIENT_INVERSION, "attack": target.spec.label, "scope": target.scope,
             "adversary": target.adversary, "client": target.client, "round": target.upload_round,
             "num_examples": update.num_examples, "local_steps": update.steps}
    if update.num_examples > MAX_IMAGES:
        return {**entry, "skipped": f"the client trained on {update.num_examples} records; gradient "
                                    f"inversion reconstructs at most {MAX_IMAGES}"}
    attack: GradientInversionAttack = target.spec.build()
    reconstruction = attack.reconstruct(update, round_seed(run.config.seed, GRADIENT_KEY, target.client))
    members = run.split.clients[target.client]
    truth_images, truth_labels = run.images(members), run.labels(members)
    scored = score_reconstruction(reconstruction.images, reconstruction.labels, truth_images, truth_labels)
    path = run.rundir.path / FOLDER / f"{target.file_stem}.npz"
    np.savez_compressed(path, images=reconstruction.images, labels=reconstruction.labels,
                        truth_images=truth_images, truth_labels=truth_labels, truth_indices=members)
    kept = scored.paired >= 0
    pair_grid(reconstruction.images[kept][:16], truth_images[scored.paired[kept]][:16],
              [f"{value:.1f} dB" for value in scored.psnr[:16]],
              f"{target.spec.label} on {target.scope}: reconstruction (upper), paired record (lower)",
              path.with_suffix(".png"))
    return {**entry, "metrics": scored.metrics.to_dict(), "details": reconstruction.details,
            "file": f"{FOLDER}/{path.name}", "seconds": {"attack": reconstruction.seconds}}


def public_pool(run: PreparedRun, target: InversionTarget) -> np.ndarray:
    """The indices the adversary holds: the population, plus a malicious client's own records."""
    if target.adversary == SERVER or target.client is None:
        return run.split.population
    return np.concatenate([run.split.population, run.split.clients[target.client]])


def private_records(run: PreparedRun, target: InversionTarget) -> np.ndarray:
    """The members of the protected class the adversary does not hold."""
    clients = [k for k in range(run.config.clients) if k != target.client or target.adversary == SERVER]
    members = np.concatenate([run.split.clients[k] for k in clients])
    return members[run.labels(members) == target.protected_class]


def invert_model(run: PreparedRun, target: InversionTarget, model: nn.Module,
                 evaluator: nn.Module) -> dict[str, Any]:
    """Model inversion of one protected class of the final model, judged by the evaluator."""
    assert target.protected_class is not None
    entry = {"kind": MODEL_INVERSION, "attack": target.spec.label, "scope": target.scope,
             "adversary": target.adversary, "class": target.protected_class}
    private = private_records(run, target)
    if len(private) < 2:
        return {**entry, "skipped": f"fewer than 2 private records of class {target.protected_class}"}
    pool = public_pool(run, target)
    access = ModelAccess(model, run.images(pool), run.labels(pool), run.dataset.num_classes,
                         PreparationCache(run.config.cache_dir))
    attack: ModelInversionAttack = target.spec.build()
    seed = round_seed(run.config.seed, MODEL_KEY, 0 if target.client is None else target.client + 1,
                      target.protected_class)
    reconstruction = attack.reconstruct(access, target.protected_class, MODEL_INVERSION_IMAGES, seed)
    private_images = run.images(private)
    with one_torch_thread():
        metrics = judge_inversion(evaluator, reconstruction.images, target.protected_class, private_images)
    path = run.rundir.path / FOLDER / f"{target.file_stem}.npz"
    np.savez_compressed(path, images=reconstruction.images, labels=reconstruction.labels,
                        private_images=private_images, private_indices=private)
    nearest = pairwise_mse(reconstruction.images, private_images).argmin(1)
    pair_grid(reconstruction.images, private_images[nearest], [""] * len(nearest),
              f"{target.spec.label} on {target.scope}, class {target.protected_class}: inverted (upper), "
              "nearest private record in pixels (lower)", path.with_suffix(".png"))
    return {**entry, "metrics": metrics.to_dict(), "details": reconstruction.details,
            "file": f"{FOLDER}/{path.name}", "seconds": {"attack": reconstruction.seconds}}


def evaluator_for(run: PreparedRun) -> tuple[nn.Module, dict[str, Any]]:
    """The evaluation classifier, trained on the test pool and saved with the run; its accuracy
    on the non-members (which neither it nor any target trained on)."""
    started = time.perf_counter()
    test = run.split.test
    evaluator = train_evaluator(run.images(test), run.labels(test), run.dataset.num_classes,
                                round_seed(run.config.seed, EVALUATOR_KEY))
    save_file(evaluator.state_dict(), str(run.rundir.path / FOLDER / EVALUATOR_FILE))
    nonmembers = run.split.nonmembers
    return evaluator, {"trained_on": "test", "records": int(len(test)),
                       "input_shape": list(run.dataset.input_shape), "num_classes": run.dataset.num_classes,
                       "accuracy": accuracy(evaluator, run.images(nonmembers), run.labels(nonmembers)),
                       "seconds": {"training": time.perf_counter() - started}}


def load_evaluator(path: Any, input_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    evaluator = EvaluatorCNN(input_shape, num_classes)
    evaluator.load_state_dict(load_file(str(path)))
    return evaluator.eval()


def run_inversions(run: PreparedRun, reports: dict[int, dict[str, Any]],
                   on_target: Callable[[str], None] | None = None) -> dict[str, Any] | None:
    """The phase; None when no inversion attack is configured. `on_target(scope)` is called as
    each target starts (and may raise to stop the phase)."""
    targets = inversion_targets(run, reports)
    if not targets:
        return None
    check_protected_classes(run)
    (run.rundir.path / FOLDER).mkdir()
    evaluator, evaluator_summary = (evaluator_for(run) if any(t.protected_class is not None for t in targets)
                                    else (None, None))
    model = load(run, FINAL_GLOBAL_MODEL)
    entries = []
    for target in targets:
        (on_target or (lambda scope: None))(target.scope)
        if target.protected_class is None:
            entries.append(invert_update(run, target, reports[target.client]))  # type: ignore[index]
        else:
            assert evaluator is not None
            entries.append(invert_model(run, target, model, evaluator))
    return {**({"evaluator": evaluator_summary} if evaluator_summary else {}), "results": entries}


def inversion_phase(run: PreparedRun, timer: RunTimer, progress: Progress | None = None,
                    on_scope: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The phase with its progress bar and timing: `{"inversion": ...}` for results.json, or
    {} when no inversion attack is configured."""
    progress = progress or SilentProgress()
    shutil.rmtree(run.rundir.path / FOLDER, ignore_errors=True)
    reports = last_client_reports(run)
    total = len(inversion_targets(run, reports))
    if not total:
        return {}
    progress.on_attacks(total, "inversion")
    with timer.phase("inversion"):
        inversion = run_inversions(run, reports, on_scope or progress.on_scope)
    progress.on_attacks_done()
    return {"inversion": inversion}


def _saved_arrays(rundir: RunDirectory, entry: dict[str, Any]) -> dict[str, np.ndarray]:
    name = entry["file"]
    try:
        with np.load(rundir.path / name) as data:
            return {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise FedmiaError(f"{rundir.path / name} is missing; {REATTACK.format(path=rundir.path)}") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise FedmiaError(f"{rundir.path / name} is damaged ({one_line(error)}); "
                          f"{REATTACK.format(path=rundir.path)}") from None


def recompute_inversions(rundir: RunDirectory, results: dict[str, Any]
                         ) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(where, recomputed metrics, reported metrics) for every inversion entry of results.json,
    from the saved arrays (and the saved evaluator for model inversion)."""
    table = results.get("inversion") or {}
    evaluator = None
    compared = []
    for entry in table.get("results", []):
        if "skipped" in entry:
            continue
        arrays = _saved_arrays(rundir, entry)
        if entry["kind"] == GRADIENT_INVERSION:
            fresh = score_reconstruction(arrays["images"], arrays["labels"], arrays["truth_images"],
                                         arrays["truth_labels"]).metrics.to_dict()
        else:
            summary = table["evaluator"]
            evaluator = evaluator or load_evaluator(rundir.path / FOLDER / EVALUATOR_FILE,
                                                    tuple(summary["input_shape"]), summary["num_classes"])
            with one_torch_thread():
                fresh = judge_inversion(evaluator, arrays["images"], entry["class"],
                                        arrays["private_images"]).to_dict()
        where = f"inversion {entry['scope']} {entry['attack']}" + (f" class {entry['class']}" if "class" in entry else "")
        compared.append((where, fresh, entry["metrics"]))
    return compared
