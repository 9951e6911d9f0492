"""The run configuration: one frozen object resolved from a TOML file and command-line flags.

Flags override the file. Per-client defenses come from `[[client]]` groups in the file or from
`defense` plus lists of its parameters (flags, or top-level keys of the file): `--epsilon
1,4,8,inf` spreads the values over the clients in order, in equal contiguous blocks, so the
number of values must divide the number of clients. An `epsilon` of `inf` means no DP for that
client: its defense becomes `none`.

Every value is checked for its type and range before anything is built, so bad input of any
kind (a flag, a TOML value of the wrong type, an absurd size) is one FedmiaError line.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w

from fedmia.data.partition import PartitionSpec
from fedmia.defenses import DefenseSpec
from fedmia.errors import FedmiaError

DEFAULT_ATTACKS = ("loss", "confidence", "entropy", "modified-entropy", "correctness", "rmia", "loss-trajectory")
DEFAULT_ADVERSARIES = ("server",)
#: A client's part in the federation: honest, or a malicious client that attacks passively
#: (it only watches the global models) or actively (its uploads push candidate records).
ROLES = ("honest", "malicious:passive", "malicious:active")
MALICIOUS_ATTACKS = ("passive", "active")

#: Upper limits of the sizes a run may ask for: far above what this simulator is useful at,
#: low enough that a typo (an extra digit or ten) is an error instead of a run that never ends
#: or fills the disk (every round writes a global model file).
MAX_CLIENTS = 10_000
MAX_ROUNDS = 1_000
MAX_LOCAL_EPOCHS = 1_000
MAX_BATCH_SIZE = 100_000
#: numpy's and scikit-learn's seeds are 32-bit.
MAX_SEED = 2**32 - 1
#: Each attack worker holds the dataset in memory: more than this is a typo.
MAX_ATTACK_WORKERS = 256
#: Far above any dataset fedmia loads (CIFAR has 60,000 samples).
MAX_DATASET_SIZE = 100_000_000

#: Keys that set one defense for every client (flags, or top-level keys of a config file).
DEFENSE_KEYS = ("defense", "epsilon", "delta", "max_grad_norm", "accountant")


def flag_name(key: str) -> str:
    """`local_epochs` -> `--local-epochs`: errors name the flag, which is also the file key."""
    return "--" + key.replace("_", "-")


@dataclass(frozen=True)
class Range:
    """The values a numeric key accepts: an integer (or any finite number) within bounds."""

    low: float
    high: float = math.inf
    integer: bool = False
    low_open: bool = False

    def describe(self) -> str:
        if self.integer:
            return f"an integer from {int(self.low)} to {int(self.high)}"
        if self.high == math.inf:
            return "a positive number" if self.low_open else f"a number >= {self.low:g}"
        return f"a number in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"

    def accepts(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int if self.integer else (int, float)):
            return False
        if not self.integer and not _finite(value):
            return False
        above_low = value > self.low if self.low_open else value >= self.low
        return above_low and value <= self.high

    def check(self, key: str, value: Any) -> None:
        if not self.accepts(value):
            raise FedmiaError(f"{flag_name(key)} must be {self.describe()}, got {value!r}")


def _finite(value: int | float) -> bool:
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


NUMERIC_KEYS = {
    "clients": Range(1, MAX_CLIENTS, integer=True),
    "rounds": Range(1, MAX_ROUNDS, integer=True),
    "local_epochs": Range(1, MAX_LOCAL_EPOCHS, integer=True),
    "batch_size": Range(0, MAX_BATCH_SIZE, integer=True),
    "seed": Range(0, MAX_SEED, integer=True),
    "lr": Range(0, low_open=True),
    "fraction": Range(0, 1, low_open=True),
    "client_cpus": Range(0, low_open=True),
    "client_gpus": Range(0),
    "client_dp_noise": Range(0),
    "client_dp_clip": Range(0, low_open=True),
    "attack_workers": Range(0, MAX_ATTACK_WORKERS, integer=True),
    "dataset_size": Range(0, MAX_DATASET_SIZE, integer=True),
    "public_size": Range(0, MAX_DATASET_SIZE, integer=True),
}
TEXT_KEYS = ("dataset", "model", "partition", "out", "device", "client_dp")


@dataclass(frozen=True)
class RunConfig:
    """Everything that fixes a run: same config and seed, same numbers on the same machine."""

    clients: int = 20
    rounds: int = 5
    dataset: str = "digits"
    #: Samples of the dataset the split uses (a stratified, seeded draw); 0: all of them.
    dataset_size: int = 0
    #: Samples set aside as a public pool every client may use (e.g. distillation's reference
    #: set); 0: none.
    public_size: int = 0
    model: str = "cnn"
    partition: str = "iid"
    local_epochs: int = 2
    #: 0: each client's whole data as one batch (with local_epochs = 1, a FedSGD client).
    batch_size: int = 16
    lr: float = 0.05
    fraction: float = 1.0
    seed: int = 0
    #: None: `runs/<dataset>-<clients>c-<rounds>r-seed<seed>`.
    out: str | None = None
    data_dir: str | None = None
    #: Where defenses keep their one-time preparation (None: $FEDMIA_CACHE_DIR or ~/.cache/fedmia).
    cache_dir: str | None = None
    download: bool = False
    device: str = "cpu"
    client_cpus: float = 1.0
    client_gpus: float = 0.0
    attacks: tuple[str, ...] = DEFAULT_ATTACKS
    client_dp: str = "off"
    client_dp_noise: float = 1.0
    client_dp_clip: float = 1.0
    #: Processes attacking scopes in parallel; 0: one per available CPU, 1: in the driver.
    #: The results do not depend on it.
    attack_workers: int = 0
    #: Who attacks: `server` (every upload and global model), `querier` (the final model's
    #: outputs at `querier_output`); malicious clients are added by their [[client]] role.
    adversaries: tuple[str, ...] = DEFAULT_ADVERSARIES
    #: What the querier sees of each query: logits, top-k:N posteriors, or label.
    querier_output: str = "logits"
    #: A defense on the released model's answers (`memguard[:key=value...]`, `top-k[:k=N]`),
    #: applied to what the querier gets; none: raw outputs.
    release: str = "none"
    #: Which uploads the server keeps on disk: all, last, or every:N rounds (and the last).
    keep_uploads: str = "all"
    #: Reconstruction attacks after the membership attacks (`fedmia.inversion`): gradient
    #: inversion on each client's upload, model inversion on the final model; none by default.
    inversions: tuple[str, ...] = ()
    #: The classes model inversion reconstructs (held out of the adversary's GAN data).
    protected_classes: tuple[int, ...] = (0,)
    defenses: tuple[DefenseSpec, ...] = field(default_factory=tuple)
    roles: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.out is None:
            object.__setattr__(self, "out", f"runs/{self.dataset}-{self.clients}c-{self.rounds}r-seed{self.seed}")
        check_types(self)
        if not self.defenses:
            object.__setattr__(self, "defenses", tuple(DefenseSpec() for _ in range(self.clients)))
        if not self.roles:
            object.__setattr__(self, "roles", ("honest",) * self.clients)
        validate(self)

    @property
    def partition_spec(self) -> PartitionSpec:
        return PartitionSpec.parse(self.partition)

    @property
    def dp_compatible_model(self) -> bool:
        return self.client_dp != "off" or any(s.needs_dp_compatible_model for s in self.defenses)

    def to_toml(self) -> str:
        """The resolved config, loadable again with `--config`."""
        data = {k: v for k, v in asdict(self).items() if k not in ("defenses", "roles") and v is not None}
        data["attacks"] = list(self.attacks)
        data["inversions"] = list(self.inversions)
        data["protected_classes"] = list(self.protected_classes)
        data["adversaries"] = list(self.adversaries)
        data["client"] = group_clients(self.defenses, self.roles)
        return tomli_w.dumps(data)


def check_types(config: RunConfig) -> None:
    """Every scalar value's type and range, before anything is built from them (a client count
    of 10^11 must not build 10^11 defense specs first)."""
    for key, allowed in NUMERIC_KEYS.items():
        allowed.check(key, getattr(config, key))
    for key in TEXT_KEYS:
        value = getattr(config, key)
        if not isinstance(value, str) or not value.strip():
            raise FedmiaError(f"{flag_name(key)} must be a non-empty text, got {value!r}")
    for key in ("data_dir", "cache_dir"):
        value = getattr(config, key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise FedmiaError(f"{flag_name(key)} must name a folder, got {value!r}")
    if not isinstance(config.download, bool):
        raise FedmiaError(f"download must be true or false, got {config.download!r}")
    check_attacks(config.attacks)
    check_inversions(config.inversions)
    check_protected_classes(config.protected_classes)
    if not isinstance(config.adversaries, tuple) or not all(isinstance(a, str) for a in config.adversaries):
        raise FedmiaError(f"--adversaries must be a comma list such as server,querier, got {config.adversaries!r}")
    for key in ("querier_output", "keep_uploads", "release"):
        if not isinstance(getattr(config, key), str):
            raise FedmiaError(f"{flag_name(key)} must be a text, got {getattr(config, key)!r}")


def check_attacks(attacks: Any) -> None:
    """A non-empty tuple of canonical attack specs (see `fedmia.attacks.spec`), each once."""
    from fedmia.attacks.spec import parse_attack_specs

    if not isinstance(attacks, tuple) or not all(isinstance(a, str) for a in attacks):
        raise FedmiaError(f"--attacks must be a comma list of attacks such as loss,rmia:refs=2, got {attacks!r}")
    parse_attack_specs(attacks)


def parse_attacks(items: Any, source: str = "--attacks") -> tuple[str, ...]:
    """`--attacks loss,rmia:refs=4`, a list of such strings, or `[[attack]]` tables -> the
    checked tuple of canonical specs."""
    from fedmia.attacks.spec import parse_attack_specs

    return tuple(spec.label for spec in parse_attack_specs(items, source))


def check_inversions(inversions: Any) -> None:
    """A tuple of canonical inversion attack specs, each once (may be empty)."""
    if not isinstance(inversions, tuple) or not all(isinstance(a, str) for a in inversions):
        raise FedmiaError("--inversions must be a comma list of inversion attacks such as "
                          f"inverting-gradients,mi-face, got {inversions!r}")
    parse_inversions(inversions)


def parse_inversions(items: Any, source: str = "--inversions") -> tuple[str, ...]:
    """`--inversions inverting-gradients:restarts=2,mi-face` or a list -> canonical labels;
    "none" or an empty list: no inversion attacks."""
    from fedmia.attacks.spec import INVERSION, parse_attack_specs

    if items in ("none", "", [], ()):
        return ()
    return tuple(spec.label for spec in parse_attack_specs(items, source, INVERSION))


def check_protected_classes(classes: Any) -> None:
    if (not isinstance(classes, tuple) or not classes
            or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in classes)
            or len(set(classes)) != len(classes)):
        raise FedmiaError(f"--protected-classes must list distinct class indices such as 0,3, got {classes!r}")


def parse_classes(value: Any, key: str = "protected_classes") -> tuple[int, ...]:
    """A comma list (flag or file string) or a TOML array of class indices."""
    parts = value.split(",") if isinstance(value, str) else value
    try:
        return tuple(int(part) if isinstance(part, str) else part for part in parts)
    except (TypeError, ValueError):
        raise FedmiaError(f"{flag_name(key)} must be a comma list of class indices such as 0,3, "
                          f"got {value!r}") from None


def parse_names(text: Any, key: str) -> tuple[str, ...]:
    """A comma list (flag or file string) or a TOML array of names."""
    names = text.split(",") if isinstance(text, str) else text
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) and n.strip() for n in names):
        raise FedmiaError(f"{flag_name(key)} must be a comma list of names, got {text!r}")
    return tuple(name.strip() for name in names)


def validate(config: RunConfig) -> None:
    """Check how values fit together; each error names the key and the fix."""
    if not re.fullmatch(r"cpu|cuda(:[0-9]+)?", config.device):
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
    from fedmia.data import DATASETS
    from fedmia.models import MODELS

    for kind, name, registry in (("dataset", config.dataset, DATASETS),
                                 ("model", config.model, MODELS)):
        if name not in registry:
            raise FedmiaError(f"unknown {kind} {name!r}; choose one of {', '.join(registry)}")
    for spec in config.defenses:
        if spec.build().needs_public_pool and config.public_size == 0:
            raise FedmiaError(f"defense {spec.name!r} trains on a public pool; set public_size "
                              "(--public-size N, e.g. 500) to carve one out of the dataset")
    if len(config.roles) != config.clients or any(role not in ROLES for role in config.roles):
        raise FedmiaError(f"client roles must be one of {', '.join(ROLES)} for each of {config.clients} clients")
    from fedmia.adversary import check_threat_models

    check_threat_models(config)
    check_release(config)


def check_release(config: RunConfig) -> None:
    """A release defense acts on the querier's answers, and MemGuard's defender needs data the
    model did not train on (the public pool)."""
    if config.release == "none":
        return
    from fedmia.release import ReleaseSpec

    release = ReleaseSpec.parse(config.release).build()
    if "querier" not in config.adversaries:
        raise FedmiaError(f"--release {config.release} acts on the querier's answers; add the querier "
                          "(--adversaries server,querier)")
    if release.needs_reference_data and config.public_size == 0:
        raise FedmiaError(f"--release {release.name} fits its defense on records the model did not train "
                          "on; set public_size (--public-size N)")


CLIENT_DP_MODES = ("off", "server-fixed", "client-fixed", "server-adaptive", "client-adaptive")


def spread(values: list[Any], num_clients: int, key: str) -> list[Any]:
    """Spread values over clients in order, in equal contiguous blocks: the number of values
    must divide the number of clients, so no value silently covers more clients than another."""
    if not values:
        raise FedmiaError(f"{flag_name(key)} is empty; give one value or a comma list")
    if num_clients % len(values):
        raise FedmiaError(f"{flag_name(key)} has {len(values)} values for {num_clients} clients; give a "
                          f"number of values that divides {num_clients} (each covers an equal block "
                          "of clients in order), or one per client")
    block = num_clients // len(values)
    return [value for value in values for _ in range(block)]


def _parse_scalar(text: str) -> Any:
    text = text.strip()
    if text in ("true", "false"):
        return text == "true"
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            continue
    return text


def value_list(key: str, raw: Any) -> list[Any]:
    """A per-client parameter as given: a comma list (flag or file string), a TOML array or
    one number."""
    if isinstance(raw, str):
        parts = raw.split(",")
        if any(not part.strip() for part in parts):
            raise FedmiaError(f"{flag_name(key)} {raw!r} has an empty value; write e.g. 1,4,8,inf")
        return [_parse_scalar(part) for part in parts]
    if isinstance(raw, list):
        return raw
    if isinstance(raw, (int, float)) and not isinstance(raw, bool):
        return [raw]
    raise FedmiaError(f"{flag_name(key)} must be a value or a list of values, got {raw!r}")


def _is_infinite(value: Any) -> bool:
    try:
        return math.isinf(float(value))
    except (TypeError, ValueError):
        return False


def client_spec(defense: Any, params: dict[str, Any]) -> DefenseSpec:
    """One client's defense; an infinite epsilon means no DP at all. Parameter names may be
    written with `-` or `_`."""
    params = {str(key).replace("-", "_"): value for key, value in params.items()}
    if _is_infinite(params.get("epsilon")):
        return DefenseSpec("none")
    return DefenseSpec(defense, params)


def defenses_from_flags(defense: str | None, param_lists: dict[str, Any],
                        num_clients: int) -> tuple[DefenseSpec, ...]:
    """`--defense dpsgd --epsilon 1,4,8,inf` -> one spec per client."""
    if defense is None:
        raise FedmiaError(f"{', '.join(flag_name(k) for k in param_lists)} set a defense's parameters; "
                          "add --defense NAME (e.g. --defense dpsgd)")
    spread_params = {key: spread(value_list(key, raw), num_clients, key)
                     for key, raw in param_lists.items()}
    return tuple(
        client_spec(defense, {key: values[k] for key, values in spread_params.items()})
        for k in range(num_clients)
    )


CLIENT_IDS_HELP = 'write e.g. ids = "0-4,7" or ids = [0, 1, 2]'


def _id_range(part: str, selector: str) -> list[int]:
    """"3" or "0-4" (inclusive, low <= high)."""
    low, dash, high = part.strip().partition("-")
    if not low.strip().isdigit() or (dash and not high.strip().isdigit()):
        raise FedmiaError(f"bad client ids {selector!r}; {CLIENT_IDS_HELP}")
    first, last = int(low), int(high) if dash else int(low)
    if last < first:
        raise FedmiaError(f"client ids {selector!r}: {part.strip()} runs backwards and selects no "
                          f"client; write {last}-{first}")
    return list(range(first, last + 1))


def _client_ids(selector: Any, num_clients: int) -> list[int]:
    """Client ids from a list of ints or a string such as "0-4,7"; each id once, in range."""
    if isinstance(selector, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in selector):
        ids = list(selector)
    elif isinstance(selector, str):
        ids = [i for part in selector.split(",") for i in _id_range(part, selector)]
    else:
        raise FedmiaError(f"bad client ids {selector!r}; {CLIENT_IDS_HELP}")
    if not ids:
        raise FedmiaError(f"client ids {selector!r} select no client; {CLIENT_IDS_HELP}")
    outside = [i for i in ids if not 0 <= i < num_clients]
    if outside:
        raise FedmiaError(f"client ids {outside[:5]} are outside 0-{num_clients - 1}; fix [[client]] ids")
    return ids


def group_role(group: dict[str, Any]) -> str:
    """Pop a group's `role` ("honest" or "malicious") and, for a malicious one, its `attack`
    ("passive", the default, or "active")."""
    role, attack = group.pop("role", "honest"), group.pop("attack", None)
    if role == "honest" and attack is None:
        return "honest"
    if role != "malicious":
        raise FedmiaError(f"[[client]] role {role!r} is not honest or malicious; an attack = ... "
                          "needs role = \"malicious\"")
    attack = "passive" if attack is None else attack
    if attack not in MALICIOUS_ATTACKS:
        raise FedmiaError(f"[[client]] attack {attack!r} is not one of {', '.join(MALICIOUS_ATTACKS)}")
    return f"malicious:{attack}"


def clients_from_groups(groups: Any, num_clients: int) -> tuple[tuple[DefenseSpec, ...], tuple[str, ...]]:
    """`[[client]]` groups (ids, defense, parameters, role) -> each client's defense and role;
    clients in no group are honest and get no defense."""
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise FedmiaError("client must be [[client]] tables, each with ids, defense and its parameters")
    specs: list[DefenseSpec | None] = [None] * num_clients
    roles = ["honest"] * num_clients
    for group in groups:
        group = dict(group)
        if "ids" not in group:
            raise FedmiaError("every [[client]] group needs ids = \"0-4\" (or a list)")
        ids = _client_ids(group.pop("ids"), num_clients)
        role = group_role(group)
        spec = client_spec(group.pop("defense", "none"), group)
        for client in ids:
            if specs[client] is not None:
                raise FedmiaError(f"client {client} is in two [[client]] groups (or twice in one); give each client once")
            specs[client], roles[client] = spec, role
    return tuple(spec or DefenseSpec() for spec in specs), tuple(roles)


def _id_text(ids: list[int]) -> str:
    """[0, 1, 2, 4] -> "0-2,4"."""
    runs: list[list[int]] = []
    for client in ids:
        if runs and client == runs[-1][1] + 1:
            runs[-1][1] = client
        else:
            runs.append([client, client])
    return ",".join(f"{first}-{last}" if last > first else str(first) for first, last in runs)


def group_clients(defenses: tuple[DefenseSpec, ...], roles: tuple[str, ...]) -> list[dict[str, Any]]:
    """Inverse of `clients_from_groups`: one group per distinct (defense, role), with exactly
    its clients."""
    groups: list[tuple[dict[str, Any], list[int]]] = []
    for client, (spec, role) in enumerate(zip(defenses, roles)):
        body = {"defense": spec.name, **spec.params}
        if role != "honest":
            body.update(role="malicious", attack=role.partition(":")[2])
        match = next((ids for known, ids in groups if known == body), None)
        if match is None:
            groups.append((body, [client]))
        else:
            match.append(client)
    return [{"ids": _id_text(ids), **body} for body, ids in groups]


_FILE_KEYS = {f.name.replace("_", "-"): f.name for f in fields(RunConfig) if f.name not in ("defenses", "roles")}
#: The keys `RunConfig.to_toml` always writes (data_dir only when set): a run's config.toml
#: without one of them was truncated or edited. attack_workers changes no result, so a run
#: written before it existed stays valid.
OPTIONAL_KEYS = ("data_dir", "attack_workers", "adversaries", "querier_output", "keep_uploads", "dataset_size",
                 "public_size", "cache_dir", "release", "inversions", "protected_classes")
WRITTEN_KEYS = frozenset(name for name in _FILE_KEYS.values() if name not in OPTIONAL_KEYS) | {"client"}


#: What a run written before an optional key existed did: it kept only each client's last upload.
EARLIER_RUNS = {"keep_uploads": "last"}


def load_run_config(text: str) -> RunConfig:
    """A run directory's config.toml, which must list every key (see `WRITTEN_KEYS`); an
    optional key it lacks takes the value runs had before the key existed (`EARLIER_RUNS`)."""
    data = tomllib.loads(text)
    keys = {_key_name(key) for key in data}
    missing = sorted(WRITTEN_KEYS - keys)
    if missing:
        raise FedmiaError(f"it lacks {', '.join(missing)}, which a run's config.toml always lists")
    return resolve_config({**{k: v for k, v in EARLIER_RUNS.items() if k not in keys}, **data}, {})


def load_toml(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise FedmiaError(f"config file {path} not found; check the --config path") from None
    except IsADirectoryError:
        raise FedmiaError(f"--config {path} is a directory; pass a TOML file (e.g. {path}/config.toml)") from None
    except OSError as error:
        raise FedmiaError(f"cannot read config file {path} ({error.strerror}); check the --config path") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise FedmiaError(f"config file {path} is not valid TOML ({error}); fix the syntax") from None


def _key_name(key: str) -> str:
    return key.replace("-", "_")


def _normalize_keys(data: dict[str, Any], source: str) -> dict[str, Any]:
    settings: dict[str, Any] = {}
    for key, value in data.items():
        name = _FILE_KEYS.get(key) or _FILE_KEYS.get(key.replace("_", "-"))
        if name is None:
            valid = ", ".join([*sorted(_FILE_KEYS), *DEFENSE_KEYS, "client", "attack"])
            raise FedmiaError(f"unknown key {key!r} in {source}; valid keys: {valid}")
        if name == "attacks":
            value = parse_attacks(value, f"attacks in {source}")
        if name == "adversaries":
            value = parse_names(value, name)
        if name == "inversions":
            value = parse_inversions(value, f"inversions in {source}")
        if name == "protected_classes":
            value = parse_classes(value)
        settings[name] = value
    return settings


def _file_defense(file_data: dict[str, Any]) -> dict[str, Any]:
    """Pop the top-level defense keys (`defense = "dpsgd"`, `epsilon = [1, 8]`) from a file."""
    return {_key_name(key): file_data.pop(key) for key in list(file_data) if _key_name(key) in DEFENSE_KEYS}


def resolve_config(file_data: dict[str, Any] | None, flags: dict[str, Any],
                   defense_flag: str | None = None,
                   defense_param_flags: dict[str, Any] | None = None) -> RunConfig:
    """File values, then flags on top; per-client defenses from flags (or the file's top-level
    defense keys) win over file groups."""
    file_data = dict(file_data or {})
    groups = file_data.pop("client", None)
    attack_tables = file_data.pop("attack", None)
    if attack_tables is not None:
        if "attacks" in file_data:
            raise FedmiaError("the config file has both attacks = [...] and [[attack]] tables; use one")
        file_data["attacks"] = attack_tables if isinstance(attack_tables, list) else [attack_tables]
    defense = _file_defense(file_data)
    if defense and groups is not None:
        raise FedmiaError(f"the config file sets {', '.join(defense)} for every client and also has "
                          "[[client]] groups; use one or the other")
    settings = _normalize_keys(file_data, "the config file")
    settings.update({k: v for k, v in flags.items() if v is not None})
    clients = settings.get("clients", RunConfig.clients)
    NUMERIC_KEYS["clients"].check("clients", clients)
    if defense_flag is not None:
        defense["defense"] = defense_flag
    defense.update(defense_param_flags or {})
    if defense:
        settings["defenses"] = defenses_from_flags(defense.pop("defense", None), defense, clients)
    elif groups is not None:
        settings["defenses"], settings["roles"] = clients_from_groups(groups, clients)
    return RunConfig(**settings)
