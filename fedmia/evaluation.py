"""The adversary's attack phase, Flower-free: from the saved models to per-scope results.

Scopes (PROTOCOL.md): `global` attacks the final global model (members = every client's data);
`client:k` attacks client k's last upload (members = client k's data). Each scope is evaluated
on a balanced set (equal members and non-members, subsampled with the run's seed), balanced per
class so that the non-members share the members' label distribution. That set is cut into two
seeded halves, balanced per class: the attack and threshold of the scope's measured epsilon
bound are chosen on the selection half, and the bound is computed on the other
(docs/PROTOCOL.md).

Utility of each target is measured here too, by the adversary's evaluator that holds the split:
accuracy on the target's own members (after training, unlike the running accuracy a client sees
during its round) and on the test pool, and their difference, the generalization gap.

Calibration uses only the adversary's knowledge: its population pool, split into shadow
members and shadow non-members, and shadow models it trains itself the way the target was
trained. For `client:k` the server also knows the global model client k started from, so its
shadow is that model fine-tuned on a client-sized slice of the population (the rest of the
population are its non-members); for `global` the shadow is trained from scratch on half of the
population.

Scopes are independent, so they run in parallel (`attack_workers` processes, see
`attack_scopes`); each is seeded on its own and computed with one torch thread, so the results
are the same bits whatever the number of workers.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedmia.adversary import adversaries_running, check_threat_models, threat_models
from fedmia.adversary.candidates import balanced_eval_set
from fedmia.adversary.references import reference_bank
from fedmia.adversary.scopes import (
    GLOBAL_SCOPE,
    ScopeSetup,
    ScopeTask,
    client_scope,
    malicious_scope,
    setup_scope,
    train_shadow,
)
from fedmia.adversary.threats import QUERIER, SERVER, malicious_clients
from fedmia.attacks import AttackSpec, MembershipAttack, ReferenceModel, Samples, parse_attack_specs
from fedmia.config import RunConfig
from fedmia.metrics import (
    BOUND_HALF,
    SELECTION_HALF,
    AttackMetrics,
    HeldOutBound,
    held_out_bound,
    membership_metrics,
)
from fedmia.errors import FedmiaError
from fedmia.privacy import default_delta
from fedmia.rundir import FINAL_GLOBAL_MODEL, RunDirectory
from fedmia.run import PreparedRun, load_prepared_run, round_seed
from fedmia.training import accuracy

__all__ = ["GLOBAL_SCOPE", "ScopeTask", "balanced_eval_set", "client_scope", "evaluate_privacy",
           "malicious_scope", "reattack", "split_halves", "train_shadow"]
#: How long stopped attack workers are given to exit after SIGTERM.
WORKER_EXIT_S = 2.0
#: How often an attack worker checks that its driver is still there.
DRIVER_CHECK_S = 1.0


@dataclass(frozen=True)
class ScopeResult:
    """All attacks on one scope. `strongest` is the attack with the highest AUC (on all
    labels: a description, not a choice the bound depends on); `bound` is the held-out epsilon
    lower bound, whose attack was chosen on the selection half only."""

    scope: str
    adversary: str
    train_accuracy: float
    test_accuracy: float
    attacks: dict[str, AttackMetrics]
    threshold_accuracy: dict[str, float]
    bound: HeldOutBound
    #: Seconds of each attack (fit and score), and of the shadow model and reference models.
    attack_seconds: dict[str, float]
    setup_seconds: dict[str, float]
    references_cached: bool
    #: What the release defense did to the querier's answers (None: no release defense).
    release: dict[str, Any] | None = None

    @property
    def strongest(self) -> str:
        return max(self.attacks, key=lambda name: self.attacks[name].auc)

    def to_dict(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "adversary": self.adversary,
            "train_accuracy": self.train_accuracy,
            "test_accuracy": self.test_accuracy,
            "generalization_gap": self.train_accuracy - self.test_accuracy,
            "strongest_attack": self.strongest,
            "eps_lower_bound": self.bound.eps_lower_bound,
            "eps_bound": self.bound.to_dict(),
            "eps_lower_bound_optimistic": max(m.eps_lower_bound_optimistic for m in self.attacks.values()),
            "attacks": {name: {**m.to_dict(), "threshold_accuracy": self.threshold_accuracy[name],
                               "seconds": self.attack_seconds[name]}
                        for name, m in self.attacks.items()},
            "seconds": {**self.setup_seconds, "references_cached": self.references_cached},
            **({"release": self.release} if self.release is not None else {}),
        }


def split_halves(classes: np.ndarray, membership: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """SELECTION_HALF or BOUND_HALF per sample of a per-class balanced evaluation set.

    Within each class, members and non-members are shuffled and paired; pairs go to the two
    halves in turn, the alternation running on across classes. So each half keeps one
    non-member per member of every class (the label skew stays uninformative), the halves
    differ by at most one pair, and every class by at most one pair."""
    halves = np.empty(len(membership), dtype=np.int8)
    turn = 0
    for label in np.unique(classes):
        in_class = classes == label
        members = rng.permutation(np.flatnonzero(in_class & (membership == 1)))
        nonmembers = rng.permutation(np.flatnonzero(in_class & (membership == 0)))
        if len(members) != len(nonmembers):
            raise ValueError(f"class {label} has {len(members)} members but {len(nonmembers)} "
                             "non-members; the evaluation set must be balanced per class")
        sides = np.where((turn + np.arange(len(members))) % 2 == 0, SELECTION_HALF, BOUND_HALF)
        halves[members], halves[nonmembers] = sides, sides
        turn += len(members)
    return halves


def scope_attacks(run: PreparedRun, adversary: str) -> list[AttackSpec]:
    """The configured attacks that `adversary` runs (see `adversaries_running`); a scope runs
    those its target view allows (the server's `global` scope has no peer uploads)."""
    models = threat_models(run.config.adversaries, run.config.roles, run.config.querier_output)
    return [spec for spec in parse_attack_specs(run.config.attacks)
            if adversary in {model.name for model in adversaries_running(spec, models)}]


def reference_banks(run: PreparedRun, setup: ScopeSetup, attacks: list[MembershipAttack]
                    ) -> tuple[dict[bool, tuple[ReferenceModel, ...]], float, bool]:
    """The reference models the attacks ask for: one bank per kind (online, offline) with as
    many models as the most demanding attack wants; each attack gets the first ones it asks
    for. Returns (banks, seconds, whether every bank came from the cache)."""
    wanted: dict[bool, int] = {}
    for attack in attacks:
        request = attack.references_needed()
        if request is not None:
            wanted[request.online] = max(wanted.get(request.online, 0), request.count)
    started, cached = time.perf_counter(), True
    banks = {}
    for online, count in sorted(wanted.items()):
        seed = round_seed(setup.knowledge.seed, 7_000_001, int(online))
        banks[online], hit = reference_bank(run, setup.recipe, setup.candidates, count, online, seed)
        cached = cached and hit
    return banks, time.perf_counter() - started, cached and bool(wanted)


def attack_scope(run: PreparedRun, task: ScopeTask, records: list[dict[str, Any]]) -> ScopeResult:
    """Fit every attack its adversary runs on the adversary's knowledge, score the balanced
    candidate set, save the scores, bound epsilon on the held-out half, and measure the
    target's train and test accuracy."""
    wanted = [(spec, spec.build()) for spec in scope_attacks(run, task.adversary)]
    setup = setup_scope(run, task, records, frozenset().union(*(attack.requires for _, attack in wanted)))
    indices, labels = setup.candidates, setup.membership
    samples = Samples(run.images(indices), run.labels(indices), indices)
    halves = split_halves(samples.labels, labels, setup.rng)
    runnable = [(spec, attack) for spec, attack in wanted if attack.requires <= setup.target.access]
    banks, reference_seconds, cached = reference_banks(run, setup, [attack for _, attack in runnable])
    metrics, decisions, all_scores, seconds = {}, {}, {}, {}
    for spec, attack in runnable:
        started = time.perf_counter()
        request = attack.references_needed()
        references = banks[request.online][:request.count] if request else ()
        attack.fit(replace(setup.knowledge, references=references))
        scores = all_scores[spec.label] = attack.score(setup.target, samples)
        seconds[spec.label] = time.perf_counter() - started
        run.rundir.save_scores(task.scope, spec.label, scores, labels, indices, halves)
        metrics[spec.label] = membership_metrics(scores, labels, setup.delta)
        decisions[spec.label] = float((attack.decide(scores) == labels.astype(bool)).mean())
    model, device = setup.model, run.config.device
    train_accuracy = accuracy(model, run.images(setup.members), run.labels(setup.members), device)
    test_accuracy = accuracy(model, run.images(run.split.test), run.labels(run.split.test), device)
    return ScopeResult(task.scope, task.adversary, train_accuracy, test_accuracy, metrics, decisions,
                       held_out_bound(all_scores, labels, halves, setup.delta), seconds,
                       {"shadow": setup.shadow_seconds, "references": reference_seconds}, cached,
                       None if setup.release is None else release_summary(setup.release.details()))


def release_summary(details: dict[str, Any]) -> dict[str, Any]:
    """A release defense's details with its wall times under `seconds`, where every timing of
    results.json lives (see `fedmia.timing`)."""
    timings = {key: value for key, value in details.items() if key.endswith("_seconds")}
    return {**{key: value for key, value in details.items() if key not in timings}, "seconds": timings}


def last_client_reports(run: PreparedRun) -> dict[int, dict[str, Any]]:
    """Each client's latest report that came with a model, with the round it was sent in."""
    latest: dict[int, dict[str, Any]] = {}
    for record in run.rundir.read_metrics():
        for report in record["clients"]:
            if not report.get("stopped"):
                latest[report["client"]] = {**report, "round": record["round"]}
            elif report["client"] in latest:
                latest[report["client"]]["stopped_later"] = True
    return latest


def client_row(run: PreparedRun, client: int, report: dict[str, Any] | None,
               scope: ScopeResult | None) -> dict[str, Any]:
    spec = run.config.defenses[client]
    row: dict[str, Any] = {"client": client, "defense": spec.name, "params": spec.params,
                           "n_train": int(len(run.split.clients[client]))}
    if report is None:
        return {**row, "trained": False}
    not_covering = (report.get("details") or {}).get("epsilon_not_covering")
    return {**row, "trained": True, "last_round": report["round"], "privacy": report.get("privacy"),
            **({"epsilon_not_covering": not_covering} if not_covering else {}),
            "stopped": bool(report.get("stopped_later")), **(scope.to_dict() if scope else {})}


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Float reductions depend on torch's thread count: every scope runs on one thread, in the
    driver or in a worker, so serial and parallel attacks compute the same bits."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def scope_tasks(run: PreparedRun, reports: dict[int, dict[str, Any]]) -> list[ScopeTask]:
    """The server's scopes (`global`, then every client that uploaded a model, in client
    order), then the querier's, then each malicious client's."""
    config = run.config
    tasks = []
    if SERVER in config.adversaries:
        tasks.append(ScopeTask(GLOBAL_SCOPE))
        for client in range(config.clients):
            report = reports.get(client)
            if report is not None:
                privacy = report.get("privacy") or {}
                delta = privacy.get("delta") or default_delta(len(run.split.clients[client]))
                tasks.append(ScopeTask(client_scope(client), SERVER, client, report["round"], delta))
    if QUERIER in config.adversaries:
        tasks.append(ScopeTask(QUERIER, QUERIER))
    for client in malicious_clients(config.roles):
        tasks.append(ScopeTask(malicious_scope(client), f"client:{client}", client))
    return tasks


def attack_task(run: PreparedRun, task: ScopeTask) -> ScopeResult:
    with one_torch_thread():
        return attack_scope(run, task, run.rundir.read_metrics())


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def worker_count(requested: int, scopes: int) -> int:
    """`requested` workers (0: one per available CPU), never more than there are scopes."""
    return max(1, min(requested or available_cpus(), scopes))


def _start_worker(driver: int) -> None:
    """Workers leave Ctrl-C to the driver, which stops them (a worker's own KeyboardInterrupt
    would print a traceback and break the pool under the driver), and end when the driver is
    gone: a driver killed outright cannot stop them, and they would attack on for nobody."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_without, args=(driver,), daemon=True).start()


def _exit_without(driver: int) -> None:
    while os.getppid() == driver:
        time.sleep(DRIVER_CHECK_S)
    os._exit(1)


def _load_in_worker(path: str) -> None:
    """A worker's first job: import everything and load the run's data (cached per process),
    so that it is handed scopes only once it can start on them at once."""
    load_prepared_run(path)


def _attack_in_worker(path: str, config: RunConfig, task: ScopeTask) -> ScopeResult:
    """One scope, on the run's data and the driver's config (`attack --attacks` changes it)."""
    return attack_task(replace(load_prepared_run(path), config=config), task)


def _stop_pool(pool: ProcessPoolExecutor, children_before: set[multiprocessing.process.BaseProcess]) -> None:
    """Cancel what has not started and end the workers at once (SIGTERM): a scope in progress
    may take seconds, and neither a failed run nor Ctrl-C should wait for it. The workers are
    collected after the shutdown, so one the pool was still spawning is ended too."""
    pool.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + WORKER_EXIT_S
    while (workers := set(multiprocessing.active_children()) - children_before) and time.monotonic() < deadline:
        for process in workers:
            process.terminate()
        for process in workers:
            process.join(max(0.0, deadline - time.monotonic()))


def queue_depth(loaded_workers: int, pending: int) -> int:
    """How many scopes to keep handed to the pool: two per loaded worker, so a worker that
    finishes one while the driver is busy with its own scope starts on the next at once; one
    per worker near the end, where a scope queued behind a busy worker would keep the driver
    waiting idle."""
    return loaded_workers * (2 if pending > 2 * loaded_workers else 1)


def attack_in_parallel(run: PreparedRun, tasks: list[ScopeTask], notify: Callable[[str], None],
                       workers: int) -> list[ScopeResult]:
    """`tasks` shared by this process and `workers - 1` spawned ones (fork is unsafe beside
    Ray's and Flower's threads). A spawned worker takes seconds to import torch and load the
    data, so this process attacks scopes itself meanwhile, and hands scopes to the pool only
    once a worker has loaded (see `queue_depth`): a small run never waits for a start-up.

    `notify(scope)` is called as each scope starts (or is queued for a worker) and may raise
    to stop the phase; the workers are then ended at once, as after any error. Results keep
    the order of `tasks`; a worker's exception reaches the caller with its own type and
    message."""
    results: list[ScopeResult | None] = [None] * len(tasks)
    pending = deque(enumerate(tasks))
    path = str(run.rundir.path)
    children_before = set(multiprocessing.active_children())
    pool = ProcessPoolExecutor(workers - 1, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_worker, initargs=(os.getpid(),))
    loading = {pool.submit(_load_in_worker, path) for _ in range(workers - 1)}
    running: dict[Future[ScopeResult], int] = {}

    def start(index: int, task: ScopeTask) -> None:
        notify(task.scope)
        running[pool.submit(_attack_in_worker, path, run.config, task)] = index

    try:
        while pending or running:
            for future in [future for future in loading if future.done()]:
                loading.remove(future)
                future.result()
            for future in [future for future in running if future.done()]:
                results[running.pop(future)] = future.result()
            while pending and len(running) < queue_depth(workers - 1 - len(loading), len(pending)):
                start(*pending.popleft())
            if pending:
                index, task = pending.popleft()
                notify(task.scope)
                results[index] = attack_task(run, task)
            elif running:
                wait(running, return_when=FIRST_COMPLETED)
    finally:
        _stop_pool(pool, children_before)
    return [result for result in results if result is not None]


def attack_scopes(run: PreparedRun, tasks: list[ScopeTask], notify: Callable[[str], None],
                  workers: int) -> list[ScopeResult]:
    """Every task's result, in the order of `tasks`; one worker attacks in this process."""
    if workers > 1:
        return attack_in_parallel(run, tasks, notify, workers)
    results = []
    for task in tasks:
        notify(task.scope)
        results.append(attack_task(run, task))
    return results


def evaluate_privacy(run: PreparedRun, on_scope: Callable[[str], None] | None = None,
                     workers: int | None = None) -> dict[str, Any]:
    """Attack every scope of every adversary; the `global`, `clients` (the server's scopes)
    and `adversaries` (the querier's and malicious clients' scopes) tables of results.json. `on_scope(scope)` is called as each scope starts and may raise to
    stop the phase; `workers` (default: the config's `attack_workers`, 0 = one per CPU) attack
    scopes in parallel, with the same results as one."""
    reports = last_client_reports(run)
    tasks = scope_tasks(run, reports)
    count = worker_count(run.config.attack_workers if workers is None else workers, len(tasks))
    results = attack_scopes(run, tasks, on_scope or (lambda scope: None), count)
    by_client = {task.client: result for task, result in zip(tasks, results)
                 if task.adversary == SERVER and task.client is not None}
    rows = [client_row(run, client, reports.get(client), by_client.get(client))
            for client in range(run.config.clients)]
    others = {task.scope: result.to_dict() for task, result in zip(tasks, results) if task.adversary != SERVER}
    return {"global": results[0].to_dict(), "clients": rows, "adversaries": others}


def reattack(path: Path, overrides: dict[str, Any] | None = None,
             workers: int | None = None) -> dict[str, Any]:
    """The attack phase and report again, from a run directory whose training finished, with
    the attack settings in `overrides` (attacks, adversaries, querier_output, release,
    inversions, protected_classes) replacing the
    run's own; `workers` as in `evaluate_privacy`."""
    from fedmia.report import write_outputs
    from fedmia.timing import RunTimer

    if not RunDirectory(path).has_model(FINAL_GLOBAL_MODEL):
        raise FedmiaError(f"{path} has no final global model; only a run whose training "
                          "finished can be attacked again")
    run = load_prepared_run(str(path))
    if overrides:
        config = replace(run.config, **overrides)
        check_threat_models(config)
        run = replace(run, config=config)
        run.rundir.write_text("config.toml", run.config.to_toml())
    from fedmia.inversion.phase import inversion_phase

    timer = RunTimer()
    with timer.phase("attacks"):
        results = evaluate_privacy(run, workers=workers)
    results.update(inversion_phase(run, timer))
    previous = run.rundir.read_json("results.json") if (run.rundir.path / "results.json").exists() else {}
    results["client_level_dp"] = previous.get("client_level_dp")
    return write_outputs(run, results, timer)
