"""The preparation phase: before the first round, every client whose defense prepares (a
diffusion model, a teacher) does it once, and the run records what it prepared or found in the
cache (`preparation.json`, with each entry's extra files such as the memorization grid under
`prepared/client-<k>-<kind>-<name>.png`). Later rounds, and later runs with the same data and parameters, load
the work from the cache. How clients are spread over processes is the caller's business
(`simulation` uses Ray tasks); this module only prepares one client and records the results."""

from __future__ import annotations

import shutil
from typing import Any

from fedmia.run import PreparedRun, load_prepared_run

PREPARATION_FILE = "preparation.json"
PREPARED_FOLDER = "prepared"


def clients_to_prepare(run: PreparedRun) -> list[int]:
    return [client for client, spec in enumerate(run.config.defenses) if spec.build().prepares]


def prepare_client(run_path: str, client: int) -> list[dict[str, Any]]:
    """Prepare client `client` of the run at `run_path` (callable in any process); the entries'
    extra files are copied into the run directory."""
    run = load_prepared_run(run_path)
    setup = run.prepare_context(client)
    records = run.config.defenses[client].build().prepare(run.client_data(client), setup)
    rows = []
    for record in records:
        files = []
        for path in sorted(setup.cache.entry(record.kind, record.key).iterdir()):
            if path.suffix == ".png":
                target = run.rundir.path / PREPARED_FOLDER / f"client-{client}-{record.kind}-{path.name}"
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, target)
                files.append(str(target.relative_to(run.rundir.path)))
        rows.append({**record.to_dict(), "files": files})
    return rows


def write_preparation(run: PreparedRun, prepared: dict[int, list[dict[str, Any]]]) -> None:
    run.rundir.write_json(PREPARATION_FILE, {str(client): rows for client, rows in sorted(prepared.items())})
