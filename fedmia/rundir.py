"""The run directory: everything needed to re-check a run, on disk, in stable formats.

    runs/<name>/
      config.toml                 resolved config (loadable with --config)
      manifest.json               dataset, model, seed, package versions, every split's indices
      metrics.jsonl               one line per finished round, appended as it finishes
      models/global_round_NNN.safetensors, models/global_final.safetensors
      models/client_KKK.safetensors   each client's last upload, as the server saw it
      models/client_KKK_round_RRR.safetensors   every upload the keep policy keeps (keep_uploads)
      references/<key>.safetensors      the adversary's reference models, by content key
      scores/<scope>__<attack>.npz    per-sample scores, labels (1 = member), dataset indices,
                                      halves (0 = selection, 1 = bound half)
      reconstructions/<scope>__<attack>[__class-C].npz, .png   each inversion's images, the
                                      records they stand for, and an image grid; evaluator.safetensors
      results.json                global and per-client tables
      report.md, roc.png, privacy.png

A run never writes over anything silently: `ensure_fresh` refuses a non-empty directory unless
asked to overwrite, and then clears it only if it holds nothing but a run's files. Commands that
read a finished run (`attack`, `check`) `verify` the files they need first, so a damaged file is
one line naming it and the fix, not a traceback after minutes of work.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from fedmia.errors import FedmiaError, one_line

Parsed = TypeVar("Parsed")

#: Everything a run writes at its top level, and the one file type of each subfolder.
RUN_FILES = frozenset({"config.toml", "manifest.json", "metrics.jsonl", "results.json", "report.md",
                       "roc.png", "privacy.png", "preparation.json"})
RUN_FOLDERS = {"models": (".safetensors",), "scores": (".npz",), "references": (".safetensors",),
               "prepared": (".png",), "reconstructions": (".npz", ".png", ".safetensors")}
SCORE_ARRAYS = ("scores", "labels", "indices", "halves")

RERUN = "rerun `python -m fedmia simulate --config {path}/config.toml --out {path} --overwrite`"
REATTACK = "recompute the attack phase with `python -m fedmia attack {path}`"


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

    def looks_like_a_run(self) -> bool:
        """True when the directory holds only what a run writes (and at least its models folder
        or manifest): the one kind of folder `--overwrite` may clear."""
        entries = list(self.path.iterdir())
        if not any(entry.name in ("models", "manifest.json") for entry in entries):
            return False
        for entry in entries:
            if entry.is_symlink():
                return False
            if entry.name in RUN_FOLDERS and entry.is_dir():
                suffixes = RUN_FOLDERS[entry.name]
                if any(f.is_symlink() or not f.is_file() or f.suffix not in suffixes for f in entry.iterdir()):
                    return False
            elif entry.name not in RUN_FILES or not entry.is_file():
                return False
        return True

    def ensure_fresh(self, overwrite: bool) -> RunDirectory:
        """Make sure a new run will not mix with anything already at the path: a non-empty
        directory is an error unless `overwrite`, which clears it, and only if it is a run
        directory (a mistyped --out must never delete someone's folder)."""
        if not self.path.exists():
            return self
        if not self.path.is_dir():
            raise FedmiaError(f"--out {self.path} is a file, not a directory; choose another --out")
        if not any(self.path.iterdir()):
            return self
        if not self.looks_like_a_run():
            raise FedmiaError(f"--out {self.path} is not empty and not a fedmia run directory; choose "
                              "another --out (--overwrite only replaces run directories)")
        if not overwrite:
            raise FedmiaError(f"run directory {self.path} already holds a run; pass --overwrite to "
                              "replace it, or choose another --out")
        for entry in self.path.iterdir():
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
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
        return self.path / "scores" / f"{file_safe(scope)}__{file_safe(attack)}.npz"

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

    def remove_stale_scores(self, results: dict[str, Any]) -> list[Path]:
        """Delete score files that `results` does not report on (attacks of an earlier attack
        phase), so scores/ holds exactly the scores behind results.json; the removed paths."""
        wanted = {self.scores_path(scope, attack) for scope, attack, _ in reported_scores(results)}
        stale = [path for path in sorted((self.path / "scores").glob("*.npz")) if path not in wanted]
        for path in stale:
            path.unlink()
        return stale

    def _damaged(self, name: str, problem: str, fix: str) -> FedmiaError:
        return FedmiaError(f"{self.path / name} {problem}; {fix.format(path=self.path)}")

    def _read_checked(self, name: str, parse: Callable[[str], Parsed], fix: str) -> Parsed:
        """A file's parsed content; a missing or unparsable file is one FedmiaError naming it."""
        if not self.path.is_dir():
            raise FedmiaError(f"{self.path} is not a directory; pass a run directory written by simulate")
        path = self.path / name
        if not path.is_file():
            raise self._damaged(name, "is missing", fix)
        try:
            return parse(path.read_text(encoding="utf-8"))
        except (FedmiaError, ValueError, KeyError, TypeError, IndexError, UnicodeDecodeError) as error:
            raise self._damaged(name, f"is damaged ({one_line(error)})", fix) from None

    def verify_trained(self) -> None:
        """Everything `attack` reads, checked before it starts: config.toml, manifest.json (and
        that they agree), metrics.jsonl, and every model file the attack phase loads."""
        from fedmia.config import load_run_config

        config = self._read_checked("config.toml", load_run_config,
                                    "restore the run's config.toml or " + RERUN)
        manifest, recorded = self._read_checked("manifest.json", _parse_manifest,
                                                "without a valid manifest the split is lost: " + RERUN)
        for key, value in recorded.items():
            if getattr(config, key) != value:
                raise self._damaged("config.toml", f"says {key} = {getattr(config, key)!r} but manifest.json "
                                    f"recorded {value!r}", "restore the run's config.toml or " + RERUN)
        records = self._read_checked("metrics.jsonl", _parse_metrics, RERUN)
        if (self.path / "results.json").exists():
            self._read_checked("results.json", json.loads, "delete it and `attack` writes a new one")
        reference = self._reference_shapes(manifest)
        for name in self._models_needed(records, config.keep_uploads):
            self._verify_model(name, reference)

    def _reference_shapes(self, manifest: dict[str, Any]) -> dict[str, list[int]]:
        """The tensor shapes of the run's architecture, from the manifest's model record."""
        from fedmia.models import build_model

        fix = "without a valid manifest the split is lost: " + RERUN
        try:
            model, arguments = manifest["model"], manifest["model"]["arguments"]
            built = build_model(model["name"], tuple(arguments["input_shape"]), arguments["num_classes"],
                                dp_compatible=model["dp_compatible"])
        except (KeyError, TypeError, ValueError, FedmiaError) as error:
            raise self._damaged("manifest.json", f"has no usable model record ({one_line(error)})", fix) from None
        return {key: list(tensor.shape) for key, tensor in built.state_dict().items()}

    def _models_needed(self, records: list[dict[str, Any]], keep_uploads: str) -> list[str]:
        """The final model, every recorded round's global model, every uploader's last model and
        every upload the keep policy kept."""
        from fedmia.adversary.uploads import KeepPolicy

        policy = KeepPolicy.parse(keep_uploads)
        try:
            rounds = [int(record["round"]) for record in records]
            uploads = {(int(report["client"]), int(record["round"])) for record in records
                       for report in record["clients"] if not report.get("stopped")}
        except (KeyError, TypeError, ValueError) as error:
            raise self._damaged("metrics.jsonl", f"is damaged ({one_line(error)} in a record)", RERUN) from None
        return ([FINAL_GLOBAL_MODEL] + [global_round_name(r) for r in rounds]
                + [client_model_name(c) for c in sorted({c for c, _ in uploads})]
                + [upload_name(c, r) for c, r in sorted(uploads) if policy.keeps(r)])

    def _verify_model(self, name: str, reference: dict[str, list[int]]) -> None:
        relative = f"models/{name}.safetensors"
        if not self.model_path(name).is_file():
            raise self._damaged(relative, "is missing", RERUN)
        try:
            with safe_open(str(self.model_path(name)), "pt") as handle:
                shapes = {key: handle.get_slice(key).get_shape() for key in handle.keys()}
        except (SafetensorError, OSError) as error:
            raise self._damaged(relative, f"is damaged ({one_line(error)})", RERUN) from None
        if shapes != reference:
            raise self._damaged(relative, "does not hold the run's model (its tensors differ from the "
                                "architecture in manifest.json)", RERUN)

    def verify_attacked(self) -> dict[str, Any]:
        """Everything `check` reads: results.json and every score file it reports on; returns
        the parsed results."""
        results = self._read_checked("results.json", json.loads, REATTACK)
        try:
            scores = reported_scores(results)
        except (KeyError, TypeError, AttributeError) as error:
            raise self._damaged("results.json", f"is damaged ({one_line(error)})", REATTACK) from None
        for scope, attack, reported in scores:
            if not isinstance(reported, dict) or not isinstance(reported.get("delta"), float):
                raise self._damaged("results.json", f"is damaged (no delta for {scope} {attack})", REATTACK)
            self._verify_scores(scope, attack)
        for scope, table in reported_tables(results):
            if not isinstance(table.get("eps_bound"), dict) or not isinstance(table["eps_bound"].get("delta"), float):
                raise self._damaged("results.json", f"is damaged (no held-out bound for {scope})", REATTACK)
        return results

    def _verify_scores(self, scope: str, attack: str) -> None:
        path = self.scores_path(scope, attack)
        relative = f"scores/{path.name}"
        if not path.is_file():
            raise self._damaged(relative, "is missing", REATTACK)
        try:
            arrays = self.load_scores(scope, attack)
            problem = _score_problem(*(arrays[name] for name in SCORE_ARRAYS))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as error:
            problem = one_line(error)
        if problem:
            raise self._damaged(relative, f"is damaged ({problem})", REATTACK)


def _score_problem(scores: np.ndarray, labels: np.ndarray, *others: np.ndarray) -> str:
    """What makes a score file unusable for the metrics, or "" when nothing does."""
    arrays = (scores, labels, *others)
    if any(a.ndim != 1 for a in arrays) or len({len(a) for a in arrays}) != 1:
        return f"{', '.join(SCORE_ARRAYS)} are not 1-D arrays of one length"
    if set(np.unique(labels).tolist()) != {0, 1}:
        return "labels must be 0 and 1, both present"
    if not np.issubdtype(scores.dtype, np.number) or not np.isfinite(scores).all():
        return "scores must be finite numbers"
    return ""


def _parse_manifest(text: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """manifest.json, and the settings it recorded that config.toml must repeat (reading them
    checks that they are there, and that the split is readable)."""
    from fedmia.data.splits import PrivacySplit

    manifest = json.loads(text)
    recorded = {"dataset": manifest["dataset"]["name"], "model": manifest["model"]["name"],
                "seed": manifest["seed"], "partition": manifest["partition"],
                "clients": len(PrivacySplit.from_dict(manifest["split"]).clients)}
    return manifest, recorded


def _parse_metrics(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line]


def reported_tables(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(scope, table) of every attacked scope in results.json."""
    tables = [("global", results["global"])]
    tables += [(f"client:{row['client']}", row) for row in results["clients"] if row.get("attacks")]
    return tables + list(results.get("adversaries", {}).items())


def reported_scores(results: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(scope, attack, reported metrics) of every attack result in results.json: each has a
    score file behind it."""
    return [(scope, attack, reported) for scope, table in reported_tables(results)
            for attack, reported in table["attacks"].items()]


FINAL_GLOBAL_MODEL = "global_final"


def file_safe(name: str) -> str:
    """A scope or attack spec as part of a file name: `client:3` -> `client-3`,
    `rmia:refs=2` -> `rmia-refs-2`."""
    return re.sub(r"[^A-Za-z0-9._]+", "-", name)


def upload_name(client: int, server_round: int) -> str:
    """Client `client`'s upload of `server_round`, kept for trajectory attacks."""
    return f"{client_model_name(client)}_round_{server_round:03d}"


def global_round_name(server_round: int) -> str:
    return f"global_round_{server_round:03d}"


def client_model_name(client: int) -> str:
    return f"client_{client:03d}"
