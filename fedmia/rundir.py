"""The run directory: everything needed to re-check a run, on disk, in stable formats.

    runs/<name>/
      config.toml                 resolved config (loadable with --config)
      manifest.json               dataset, model, seed, package versions, every split's indices
      metrics.jsonl               one line per finished round, appended as it finishes
      models/global_round_NNN.safetensors, models/global_final.safetensors
      models/client_KKK.safetensors   each client's last upload, as the server saw it
      scores/<scope>__<attack>.npz    per-sample scores, labels (1 = member), dataset indices,
                                      halves (0 = selection, 1 = bound half)
      results.json                global and per-client tables
      report.md, roc.png, privacy.png
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from fedmia.errors import FedmiaError


def _jsonable(value: Any) -> Any:
    """JSON has no inf/nan: write them as null so every reader can parse the files."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    return value


class RunDirectory:
    """Reads and writes one run's files."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def create(self) -> RunDirectory:
        try:
            for folder in (self.path, self.path / "models", self.path / "scores"):
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise FedmiaError(f"cannot create run directory {self.path} ({error.strerror}); "
                              "pass a writable --out") from None
        return self

    def write_text(self, name: str, text: str) -> Path:
        target = self.path / name
        target.write_text(text, encoding="utf-8")
        return target

    def write_json(self, name: str, data: Any) -> Path:
        return self.write_text(name, json.dumps(_jsonable(data), indent=2) + "\n")

    def read_json(self, name: str) -> Any:
        return json.loads((self.path / name).read_text(encoding="utf-8"))

    def reset_metrics(self) -> None:
        (self.path / "metrics.jsonl").write_text("", encoding="utf-8")

    def append_metrics(self, record: dict[str, Any]) -> None:
        """One JSON line, flushed at once, so a killed run keeps every finished round."""
        with open(self.path / "metrics.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(_jsonable(record)) + "\n")
            handle.flush()

    def read_metrics(self) -> list[dict[str, Any]]:
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]

    def model_path(self, name: str) -> Path:
        return self.path / "models" / f"{name}.safetensors"

    def save_model(self, name: str, state: dict[str, torch.Tensor]) -> Path:
        target = self.model_path(name)
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(target))
        return target

    def load_model(self, name: str) -> dict[str, torch.Tensor]:
        return load_file(str(self.model_path(name)))

    def has_model(self, name: str) -> bool:
        return self.model_path(name).exists()

    def scores_path(self, scope: str, attack: str) -> Path:
        return self.path / "scores" / f"{scope.replace(':', '-')}__{attack}.npz"

    def save_scores(self, scope: str, attack: str, scores: np.ndarray, labels: np.ndarray,
                    indices: np.ndarray, halves: np.ndarray) -> Path:
        """`halves`: 0 = selection half, 1 = bound half of the held-out epsilon bound."""
        target = self.scores_path(scope, attack)
        np.savez_compressed(target, scores=scores, labels=labels.astype(np.int8), indices=indices,
                            halves=halves.astype(np.int8))
        return target

    def load_scores(self, scope: str, attack: str) -> dict[str, np.ndarray]:
        with np.load(self.scores_path(scope, attack)) as data:
            return {key: data[key] for key in data.files}


FINAL_GLOBAL_MODEL = "global_final"


def global_round_name(server_round: int) -> str:
    return f"global_round_{server_round:03d}"


def client_model_name(client: int) -> str:
    return f"client_{client:03d}"
