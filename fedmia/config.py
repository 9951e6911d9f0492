"""The run configuration: one frozen object resolved from a TOML file and command-line flags.

Flags override the file. Per-client defenses come from `[[clients]]` groups in the file or from
`--defense NAME` plus comma lists of its parameters on the command line (`--epsilon 1,4,8,inf`
spreads the values over the clients in order, in contiguous blocks). An `epsilon` of `inf`
means no DP for that client: its defense becomes `none`.
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w

from fedmia.data.partition import PartitionSpec
from fedmia.defenses import DefenseSpec
from fedmia.errors import FedmiaError

DEFAULT_ATTACKS = ("loss", "confidence", "entropy", "modified-entropy", "correctness")


@dataclass(frozen=True)
class RunConfig:
    """Everything that fixes a run: same config and seed, same numbers on the same machine."""

    clients: int = 20
    rounds: int = 5
    dataset: str = "digits"
    model: str = "cnn"
    partition: str = "iid"
    local_epochs: int = 2
    batch_size: int = 16
    lr: float = 0.05
    fraction: float = 1.0
    seed: int = 0
    out: str = ""
    data_dir: str | None = None
    download: bool = False
    device: str = "cpu"
    client_cpus: float = 1.0
    client_gpus: float = 0.0
    attacks: tuple[str, ...] = DEFAULT_ATTACKS
    client_dp: str = "off"
    client_dp_noise: float = 1.0
    client_dp_clip: float = 1.0
    defenses: tuple[DefenseSpec, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not self.defenses:
            object.__setattr__(self, "defenses", tuple(DefenseSpec() for _ in range(self.clients)))
        if not self.out:
            object.__setattr__(self, "out", f"runs/{self.dataset}-{self.clients}c-{self.rounds}r-seed{self.seed}")
        validate(self)

    @property
    def partition_spec(self) -> PartitionSpec:
        return PartitionSpec.parse(self.partition)

    @property
    def dp_compatible_model(self) -> bool:
        return self.client_dp != "off" or any(s.needs_dp_compatible_model for s in self.defenses)

    def to_toml(self) -> str:
        """The resolved config, loadable again with `--config`."""
        data = {k: v for k, v in asdict(self).items() if k != "defenses" and v is not None}
        data["attacks"] = list(self.attacks)
        data["client"] = group_defenses(self.defenses)
        return tomli_w.dumps(data)


def validate(config: RunConfig) -> None:
    """Check every value up front; each error names the key and the fix."""
    positive = {"clients": config.clients, "rounds": config.rounds,
                "local-epochs": config.local_epochs, "batch-size": config.batch_size}
    for key, value in positive.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise FedmiaError(f"--{key} must be a positive integer, got {value!r}")
    if not (isinstance(config.lr, (int, float)) and config.lr > 0 and math.isfinite(config.lr)):
        raise FedmiaError(f"--lr must be a positive number, got {config.lr!r}")
    if not 0 < config.fraction <= 1:
        raise FedmiaError(f"--fraction must be in (0, 1], got {config.fraction!r}")
    if config.client_cpus <= 0 or config.client_gpus < 0:
        raise FedmiaError("--client-cpus must be positive and --client-gpus non-negative")
    if config.device != "cpu" and not config.device.startswith("cuda"):
        raise FedmiaError(f"--device must be cpu or cuda[:N], got {config.device!r}")
    if len(config.defenses) != config.clients:
        raise FedmiaError(
            f"{len(config.defenses)} client defenses for {config.clients} clients; "
            "make the [[client]] groups cover every client once"
        )
    if config.client_dp not in CLIENT_DP_MODES:
        raise FedmiaError(f"--client-dp must be one of {', '.join(CLIENT_DP_MODES)}, "
                          f"got {config.client_dp!r}")
    if config.client_dp != "off" and config.fraction < 1:
        raise FedmiaError("--client-dp needs every client in every round (Flower's wrappers "
                          "calibrate noise to a fixed sample); use --fraction 1")
    PartitionSpec.parse(config.partition)
    from fedmia.attacks import ATTACKS
    from fedmia.data import DATASETS
    from fedmia.models import MODELS

    for kind, name, registry in (("dataset", config.dataset, DATASETS),
                                 ("model", config.model, MODELS)):
        if name not in registry:
            raise FedmiaError(f"unknown {kind} {name!r}; choose one of {', '.join(registry)}")
    for name in config.attacks:
        if name not in ATTACKS:
            raise FedmiaError(f"unknown attack {name!r}; choose from {', '.join(ATTACKS)}")
    for spec in config.defenses:
        spec.build()


CLIENT_DP_MODES = ("off", "server-fixed", "client-fixed", "server-adaptive", "client-adaptive")


def spread(values: list[Any], num_clients: int) -> list[Any]:
    """Spread values over clients in order, in contiguous blocks as equal as possible."""
    if not values:
        raise FedmiaError("an empty list of values cannot be spread over clients")
    if len(values) > num_clients:
        raise FedmiaError(f"{len(values)} values for {num_clients} clients; give at most one per client")
    base, extra = divmod(num_clients, len(values))
    return [v for i, v in enumerate(values) for _ in range(base + (i < extra))]


def _parse_scalar(text: str) -> Any:
    text = text.strip()
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            continue
    return text


def client_spec(defense: str, params: dict[str, Any]) -> DefenseSpec:
    """One client's defense; an infinite epsilon means no DP at all."""
    epsilon = params.get("epsilon")
    if epsilon is not None and math.isinf(float(epsilon)):
        return DefenseSpec("none")
    return DefenseSpec(defense, dict(params))


def defenses_from_flags(defense: str, param_lists: dict[str, str], num_clients: int) -> tuple[DefenseSpec, ...]:
    """`--defense dpsgd --epsilon 1,4,8,inf` -> one spec per client."""
    spread_params = {key: spread([_parse_scalar(v) for v in raw.split(",")], num_clients)
                     for key, raw in param_lists.items()}
    return tuple(
        client_spec(defense, {key: values[k] for key, values in spread_params.items()})
        for k in range(num_clients)
    )


def _client_ids(selector: Any, num_clients: int) -> list[int]:
    """Client ids from a list of ints or a string such as "0-4,7"."""
    if isinstance(selector, list) and all(isinstance(i, int) for i in selector):
        ids = selector
    elif isinstance(selector, str):
        ids = []
        for part in selector.split(","):
            low, _, high = part.strip().partition("-")
            try:
                ids += list(range(int(low), int(high or low) + 1))
            except ValueError:
                raise FedmiaError(f"bad client ids {selector!r}; write e.g. \"0-4,7\" or [0, 1]") from None
    else:
        raise FedmiaError(f"bad client ids {selector!r}; write e.g. \"0-4,7\" or [0, 1]")
    outside = [i for i in ids if not 0 <= i < num_clients]
    if outside:
        raise FedmiaError(f"client ids {outside} are outside 0-{num_clients - 1}; fix [[client]] ids")
    return ids


def defenses_from_groups(groups: list[dict[str, Any]], num_clients: int) -> tuple[DefenseSpec, ...]:
    """`[[client]]` groups (ids, defense, parameters); clients in no group get no defense."""
    specs: list[DefenseSpec | None] = [None] * num_clients
    for group in groups:
        group = dict(group)
        if "ids" not in group:
            raise FedmiaError("every [[client]] group needs ids = \"0-4\" (or a list)")
        ids = _client_ids(group.pop("ids"), num_clients)
        spec = client_spec(group.pop("defense", "none"), group)
        for client in ids:
            if specs[client] is not None:
                raise FedmiaError(f"client {client} is in two [[client]] groups; give each client one")
            specs[client] = spec
    return tuple(spec or DefenseSpec() for spec in specs)


def group_defenses(defenses: tuple[DefenseSpec, ...]) -> list[dict[str, Any]]:
    """Inverse of `defenses_from_groups`: runs of equal specs become one group."""
    groups: list[dict[str, Any]] = []
    for client, spec in enumerate(defenses):
        body = {"defense": spec.name, **spec.params}
        if groups and groups[-1]["body"] == body:
            groups[-1]["last"] = client
        else:
            groups.append({"first": client, "last": client, "body": body})
    return [{"ids": f"{g['first']}-{g['last']}", **g["body"]} for g in groups]


_FILE_KEYS = {f.name.replace("_", "-"): f.name for f in fields(RunConfig) if f.name != "defenses"}


def load_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise FedmiaError(f"config file {path} not found; check the --config path") from None
    except tomllib.TOMLDecodeError as error:
        raise FedmiaError(f"config file {path} is not valid TOML ({error}); fix the syntax") from None


def _normalize_keys(data: dict[str, Any], source: str) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for key, value in data.items():
        name = _FILE_KEYS.get(key) or _FILE_KEYS.get(key.replace("_", "-"))
        if name is None:
            raise FedmiaError(f"unknown key {key!r} in {source}; valid keys: {', '.join(sorted(_FILE_KEYS))}, client")
        settings[name] = tuple(value) if name == "attacks" else value
    return settings


def resolve_config(file_data: dict[str, Any] | None, flags: dict[str, Any],
                   defense_flag: str | None = None,
                   defense_param_flags: dict[str, str] | None = None) -> RunConfig:
    """File values, then flags on top; per-client defenses from flags win over file groups."""
    file_data = dict(file_data or {})
    groups = file_data.pop("client", [])
    settings = _normalize_keys(file_data, "the config file")
    settings.update({k: v for k, v in flags.items() if v is not None})
    clients = settings.get("clients", RunConfig.clients)
    if not isinstance(clients, int) or isinstance(clients, bool) or clients <= 0:
        raise FedmiaError(f"--clients must be a positive integer, got {clients!r}")
    if defense_flag is not None or defense_param_flags:
        settings["defenses"] = defenses_from_flags(defense_flag or "none", defense_param_flags or {}, clients)
    elif groups:
        settings["defenses"] = defenses_from_groups(groups, clients)
    try:
        return RunConfig(**settings)
    except TypeError as error:
        raise FedmiaError(f"bad config value ({error}); check the types in the config file") from None
