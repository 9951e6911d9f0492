"""Where a defense's one-time preparation (a diffusion model and its samples, a teacher) lives
between rounds and between runs.

Flower rebuilds a client every round, and a study reruns the same clients under many attacks
and seeds, so preparation is stored on disk under a content key: a hash of the client's actual
records, the defense's name and parameters, the local plan and the seed. The same key always
means the same result, so a later round or a later run loads it instead of training again.
Entries are written to a temporary folder and renamed into place, so a killed run never leaves
a half-written entry that a later run would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from fedmia.errors import FedmiaError

ARRAYS_FILE = "arrays.safetensors"
DETAILS_FILE = "details.json"
#: Bumped when what a preparation computes changes, so old entries are not reused.
CACHE_VERSION = 1
#: Entries a process keeps in memory (a client's teacher and samples are a few of them).
MEMO_ENTRIES = 16


def default_cache_dir() -> Path:
    """`$FEDMIA_CACHE_DIR`, else `$XDG_CACHE_HOME/fedmia`, else `~/.cache/fedmia`."""
    if os.environ.get("FEDMIA_CACHE_DIR"):
        return Path(os.environ["FEDMIA_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fedmia"


def content_key(kind: str, **parts: Any) -> str:
    """A short hash of everything that decides a preparation's result. Arrays are hashed by
    their bytes, dtype and shape; everything else by its JSON form."""
    def digest(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            array = np.ascontiguousarray(value)
            return [hashlib.sha256(array.tobytes()).hexdigest(), str(array.dtype), list(array.shape)]
        return value

    content = {"kind": kind, "version": CACHE_VERSION, **{k: digest(v) for k, v in parts.items()}}
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Prepared:
    """A preparation's result: arrays (the synthetic set, a model's weights) and JSON details
    (seconds, accuracies, a memorization check); `files` are extra outputs such as images."""

    arrays: dict[str, np.ndarray]
    details: dict[str, Any] = field(default_factory=dict)
    files: tuple[Path, ...] = ()


@dataclass(frozen=True)
class PreparationRecord:
    """What a run reports about one preparation: which entry, whether it was reused, and the
    seconds it took this time (loading, when reused)."""

    kind: str
    key: str
    reused: bool
    seconds: float
    details: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "key": self.key, "reused": self.reused,
                "seconds": self.seconds, "details": self.details}


Builder = Callable[[Path], Prepared]


class PreparationCache:
    """Prepared entries under `root/<kind>/<key>/`, plus a small per-process memo of the most
    recent entries, so a worker that trains the same clients round after round reads each
    entry once, while one that serves thousands of clients does not keep them all in memory."""

    _memo: OrderedDict[Path, Prepared] = OrderedDict()

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    def entry(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def get_or_build(self, kind: str, key: str, build: Builder) -> tuple[Prepared, PreparationRecord]:
        """The entry for `key`, built by `build(folder)` (which may write extra files into
        `folder`) when it is not there yet."""
        started = time.perf_counter()
        path = self.entry(kind, key)
        prepared = self._memo.get(path) or self._load(path)
        reused = prepared is not None
        if prepared is None:
            prepared = self._build(path, build)
        self._memo[path] = prepared
        self._memo.move_to_end(path)
        while len(self._memo) > MEMO_ENTRIES:
            self._memo.popitem(last=False)
        return prepared, PreparationRecord(kind, key, reused, time.perf_counter() - started, prepared.details)

    def _load(self, path: Path) -> Prepared | None:
        if not (path / ARRAYS_FILE).is_file():
            return None
        try:
            arrays = load_file(path / ARRAYS_FILE)
            details = json.loads((path / DETAILS_FILE).read_text())
        except (OSError, SafetensorError, json.JSONDecodeError) as error:
            raise FedmiaError(f"prepared entry {path} is damaged ({error}); delete that folder "
                              "and run again") from None
        files = tuple(sorted(p for p in path.iterdir() if p.name not in (ARRAYS_FILE, DETAILS_FILE)))
        return Prepared(arrays, details, files)

    def _build(self, path: Path, build: Builder) -> Prepared:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir()
        except OSError as error:
            raise FedmiaError(f"cannot write the preparation cache at {self.root} ({error.strerror}); "
                              "pass a writable --cache-dir") from None
        prepared = build(partial)
        save_file({name: np.ascontiguousarray(array) for name, array in prepared.arrays.items()},
                  str(partial / ARRAYS_FILE))
        (partial / DETAILS_FILE).write_text(json.dumps(prepared.details, indent=1, sort_keys=True))
        try:
            partial.rename(path)
        except OSError:
            shutil.rmtree(partial, ignore_errors=True)
            if not (path / ARRAYS_FILE).is_file():
                raise
        return self._load(path) or prepared
