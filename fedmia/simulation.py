"""Simulation wiring: the fedmia apps on Flower's simulation runtime with Ray-backed clients.

With `fedmia.cli`, the only core module that imports Flower. The run is prepared (data loaded
and checked, split made, run directory written) and the machine's resources are checked before
Ray starts, so bad input fails fast. Ctrl-C stops the run cleanly (see `Interruption`).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import ray
import torch
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation

from clients.app import make_client_app
from fedmia.config import RunConfig
from fedmia.errors import FedmiaError
from fedmia.progress import TerminalProgress
from fedmia.preparation import clients_to_prepare, prepare_client, write_preparation
from fedmia.run import PreparedRun, prepare_run
from fedmia.timing import RunTimer
from strategies.server_app import ServerControl, make_server_app, wrap_client_dp

INTERRUPTED_EXIT_CODE = 130
WATCHDOG_DELAY_S = 0.5
PR_SET_CHILD_SUBREAPER = 36
#: What Ray's worker processes import as they start, before any client message: the ClientApp
#: with fedmia and torch, Flower's client actor, and torch's compiler front end, which
#: torch.optim imports on a process's first optimizer (about a second). Ray starts the workers
#: with the cluster, so this runs while the driver sets up the federation, instead of inside
#: round 1.
WORKER_MODULES = ("clients.app", "flwr.simulation.ray_transport.ray_actor", "torch._dynamo")
#: Ray passes objects up to this size inside the call instead of through its shared-memory
#: store (default 100 KiB): a round's instruction and reply carry the whole model, and on the
#: default model (150 KiB) the store's round trip took 4.5 ms against 1.2 ms inline.
INLINE_OBJECT_BYTES = 4 * 1024 * 1024


def quiet_logs(verbose: bool) -> None:
    """Flower logs every message exchange; keep only errors unless -v."""
    level = logging.DEBUG if verbose else logging.ERROR
    logging.getLogger("flwr").setLevel(level)
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")


def cuda_index(device: str) -> int:
    """The GPU index of `cuda` or `cuda:N`."""
    index = device.partition(":")[2] or "0"
    if device.split(":")[0] != "cuda" or not index.isdigit():
        raise FedmiaError(f"--device must be cpu or cuda[:N], got {device!r}")
    return int(index)


def check_resources(config: RunConfig, cpus: int, gpus: int) -> None:
    """Ray waits forever for client actors whose resources no node has ("ActorPool is
    empty"), and a CUDA device torch cannot see fails only inside the clients: refuse both
    before Ray starts, on a machine with `cpus` CPUs and `gpus` GPUs."""
    if config.client_cpus > cpus:
        raise FedmiaError(f"--client-cpus {config.client_cpus:g} is more than this machine's "
                          f"{cpus} CPUs; use at most --client-cpus {cpus}")
    if config.client_gpus > gpus:
        raise FedmiaError(f"--client-gpus {config.client_gpus:g} is more than this machine's "
                          f"{gpus} GPUs" + ("; use --client-gpus 0" if gpus == 0 else
                                            f"; use at most --client-gpus {gpus}"))
    if config.device != "cpu" and cuda_index(config.device) >= gpus:
        raise FedmiaError(f"--device {config.device} needs a CUDA GPU and torch sees "
                          f"{gpus or 'none'}; use --device cpu"
                          + (f" or cuda:0..cuda:{gpus - 1}" if gpus else ""))


def start_ray(gpus: int, verbose: bool) -> None:
    """Always a new local Ray instance (never one left over by an earlier run or started with
    `ray start`). Workers find the project through PYTHONPATH in the environment they inherit,
    not through a runtime environment, which Ray would have to build for every job, and
    import `WORKER_MODULES` as they start; models travel inline (`INLINE_OBJECT_BYTES`)."""
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    ray.init(
        address="local",
        num_cpus=os.cpu_count(),
        num_gpus=gpus,
        include_dashboard=False,
        log_to_driver=verbose,
        logging_level=logging.INFO if verbose else logging.ERROR,
        _system_config={"preload_python_modules": list(WORKER_MODULES),
                        "max_direct_call_object_size": INLINE_OBJECT_BYTES},
    )


def _stat(pid: str) -> tuple[int, str] | None:
    """(parent pid, start time) of a live process, from /proc (None once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[1]), fields[19]) if fields[0] not in ("Z", "X") else None


def descendant_processes() -> dict[int, str]:
    """Every process below this one, pid -> start time (empty where there is no /proc)."""
    parents: dict[int, list[int]] = {}
    started: dict[int, str] = {}
    for entry in Path("/proc").glob("[0-9]*") if Path("/proc").is_dir() else []:
        stat = _stat(entry.name)
        if stat:
            parents.setdefault(stat[0], []).append(int(entry.name))
            started[int(entry.name)] = stat[1]
    found, todo = {}, list(parents.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        found[pid] = started[pid]
        todo.extend(parents.get(pid, []))
    return found


def adopt_orphans() -> None:
    """Become the parent of this process's orphaned descendants (Linux's child subreaper):
    Flower shuts Ray down itself, and Ray's workers outlive the raylet, their parent, by a
    moment; adopted, they are still found (and waited for) by `stop_ray`."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)


def reap(pid: int) -> None:
    """Collect an adopted child's exit status, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def still_running(processes: dict[int, str]) -> dict[int, str]:
    """The ones of `processes` (pid -> start time) still alive, reaping those that ended; the
    start time guards against a reused pid."""
    for pid in processes:
        reap(pid)
    return {pid: start for pid, start in processes.items() if (_stat(str(pid)) or (0, ""))[1] == start}


def send(processes: dict[int, str], signum: int) -> None:
    for pid in still_running(processes):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def stop_ray(before_ray: dict[int, str], timeout_s: float = 2.0) -> None:
    """Shut Ray down and end every process it started (the descendants not in `before_ray`):
    its client workers would notice only later that the raylet is gone, busy ones after their
    current task, and none may outlive the run. They get SIGTERM, and SIGKILL after
    `timeout_s`."""
    processes = {pid: start for pid, start in descendant_processes().items()
                 if before_ray.get(pid) != start}
    ray.shutdown()
    send(processes, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while still_running(processes) and time.monotonic() < deadline:
        time.sleep(0.05)
    send(processes, signal.SIGKILL)
    still_running(processes)


def backend_config(config: RunConfig) -> dict[str, Any]:
    """Resources per client actor: a CPU each, and a GPU fraction on CUDA runs."""
    return {"client_resources": {"num_cpus": config.client_cpus, "num_gpus": config.client_gpus}}


class Interruption:
    """Ctrl-C in the driver: one line and exit code 130, instead of Flower's and Ray's error
    flood and threads that keep the process alive.

    Python runs the SIGINT handler in the main thread, where Flower's simulation runtime waits;
    the runtime's clean-up then stops Ray while its worker threads wait for client replies, and
    those threads log every lost reply or wait for ever. So the handler first silences logging,
    then stops the ServerApp (`control.stop`) and raises KeyboardInterrupt; `settle` gives the
    ServerApp thread `grace_s` to end and has a watchdog end the process if any other thread
    would keep it alive. A second Ctrl-C is ignored: the stop is under way, bounded."""

    def __init__(self, control: ServerControl, grace_s: float = 3.0) -> None:
        self.control = control
        self.grace_s = grace_s
        self._previous: Any = None

    def __enter__(self) -> Interruption:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        """Ctrl-C gets its usual meaning back, unless it stopped this run: the process is then
        ending, and another Ctrl-C must not turn its last second into a traceback."""
        if self._previous is not None and not self.control.stop.is_set():
            signal.signal(signal.SIGINT, self._previous)

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self.control.stop.is_set():
            return
        logging.disable(logging.CRITICAL)
        self.control.stop.set()
        raise KeyboardInterrupt

    def settle(self) -> None:
        """After a stop: wait up to `grace_s` for the ServerApp thread (it ends at its next wait
        or scope; the files it writes stay whole). Flower's threads blocked on replies Ray will
        never send would keep the interpreter from exiting, so a watchdog then ends the process
        with exit code 130, WATCHDOG_DELAY_S after the caller has said why."""
        if not self.control.stop.is_set():
            return
        if self.control.thread is not None:
            self.control.thread.join(self.grace_s)
        if busy_threads():
            watchdog = threading.Timer(WATCHDOG_DELAY_S, os._exit, args=(INTERRUPTED_EXIT_CODE,))
            watchdog.daemon = True
            watchdog.start()


def busy_threads() -> list[threading.Thread]:
    """Threads other than this one that the interpreter waits for before it exits."""
    return [t for t in threading.enumerate()
            if t is not threading.current_thread() and not t.daemon and t.is_alive()]


def prepare_in_parallel(run: PreparedRun, progress: TerminalProgress, timer: RunTimer) -> None:
    """The preparation phase (see `fedmia.preparation`) as one Ray task per client, with the
    client actors' resources, so diffusion models train side by side (on the GPU with
    --device cuda and --client-gpus)."""
    clients = clients_to_prepare(run)
    if clients:
        with timer.phase("preparation"):
            prepare_clients(run, clients, progress)


def prepare_clients(run: PreparedRun, clients: list[int], progress: TerminalProgress) -> None:
    config = run.config
    task = ray.remote(num_cpus=config.client_cpus, num_gpus=config.client_gpus)(prepare_client)
    pending = {task.remote(str(run.rundir.path), client): client for client in clients}
    prepared: dict[int, list[dict[str, Any]]] = {}
    progress.on_prepared(0, len(clients))
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        client = pending.pop(ready[0])
        try:
            prepared[client] = ray.get(ready[0])
        except ray.exceptions.RayTaskError as error:
            cause = error.cause if isinstance(error.cause, FedmiaError) else error
            raise FedmiaError(f"preparing client {client}'s defense failed: {str(cause).splitlines()[-1]}") from None
        progress.on_prepared(len(prepared), len(clients))
    write_preparation(run, prepared)


def simulate(config: RunConfig, verbose: bool = False) -> dict[str, Any]:
    """Run the whole federation, its attacks and report; returns results.json's content."""
    timer = RunTimer()
    gpus = torch.cuda.device_count()
    check_resources(config, os.cpu_count() or 1, gpus)
    wrap_client_dp(config, FedAvg())
    run = prepare_run(config)
    quiet_logs(verbose)
    progress = TerminalProgress(config.rounds)
    control = ServerControl()
    before_ray = descendant_processes()
    adopt_orphans()
    with Interruption(control) as interruption:
        try:
            with timer.phase("ray_startup"):
                start_ray(gpus, verbose)
            prepare_in_parallel(run, progress, timer)
            run_simulation(
                server_app=make_server_app(run, progress, timer, control),
                client_app=make_client_app(str(run.rundir.path)),
                num_supernodes=config.clients,
                backend_config=backend_config(config),
                verbose_logging=verbose,
            )
        finally:
            progress.close()
            stop_ray(before_ray)
            interruption.settle()
    return run.rundir.read_json("results.json")
