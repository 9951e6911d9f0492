"""Attack specs: which attack, with which parameters, for which adversaries.

On the command line an attack is `name[:key=value]...` (`lira:refs=16:online=true`); in a
config file it is that string in `attacks = [...]` or an `[[attack]]` table with `name` and
its parameters. `adversaries` (`server+querier` in a string, a list in a table) limits the
adversaries that run it; without it every configured adversary that can run it does.

The spec's `label` is its canonical text: the key of its results and score files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedmia.errors import FedmiaError

ADVERSARIES_KEY = "adversaries"


#: The attack families a spec may name: membership inference (`--attacks`) and
#: reconstruction (`--inversions`), each with its own registry.
MEMBERSHIP = "membership"
INVERSION = "inversion"


def registry(family: str) -> dict[str, type[Any]]:
    if family == INVERSION:
        from fedmia.inversion import INVERSIONS

        return INVERSIONS
    from fedmia.attacks import ATTACKS

    return ATTACKS


def attack_class(name: str, family: str = MEMBERSHIP) -> type[Any]:
    known = registry(family)
    if name not in known:
        what = "inversion attack" if family == INVERSION else "attack"
        raise FedmiaError(f"unknown {what} {name!r}; choose from {', '.join(known)}")
    return known[name]


def _parse_value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _format_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class AttackSpec:
    """One attack to run: its registered name, the parameters given (not the defaults), and the
    adversaries it is limited to (empty: every adversary that can run it)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)
    adversaries: tuple[str, ...] = ()
    family: str = MEMBERSHIP

    @property
    def label(self) -> str:
        parts = [self.name, *(f"{key}={_format_value(value)}" for key, value in self.params.items())]
        if self.adversaries:
            parts.append(f"{ADVERSARIES_KEY}={'+'.join(self.adversaries)}")
        return ":".join(parts)

    def build(self) -> Any:
        """The attack: a MembershipAttack, or a ReconstructionAttack for the inversion family."""
        return attack_class(self.name, self.family)(**self.params)

    @classmethod
    def parse(cls, text: str, family: str = MEMBERSHIP) -> AttackSpec:
        """`name:key=value:...`; every part must be `key=value`."""
        name, *parts = [part.strip() for part in text.strip().split(":")]
        if not name:
            raise FedmiaError(f"attack {text!r} has no name; write e.g. lira:refs=16")
        params: dict[str, Any] = {}
        for part in parts:
            key, sep, value = part.partition("=")
            if not sep or not key.strip() or not value.strip():
                raise FedmiaError(f"attack {text!r}: {part!r} is not key=value; write e.g. {name}:refs=4")
            params[key.strip()] = _parse_value(value.strip())
        return cls.from_table({"name": name, **params}, text, family)

    @classmethod
    def from_table(cls, table: Any, where: str | None = None, family: str = MEMBERSHIP) -> AttackSpec:
        """An `[[attack]]` table (or a parsed string): name, parameters, optional adversaries."""
        if not isinstance(table, dict) or not isinstance(table.get("name"), str):
            raise FedmiaError(f"attack {where or table!r} needs a name; write [[attack]] tables as "
                              'name = "lira" plus its parameters')
        params = dict(table)
        name = params.pop("name")
        adversaries = params.pop(ADVERSARIES_KEY, ())
        if isinstance(adversaries, str):
            adversaries = tuple(part for part in adversaries.split("+"))
        if not isinstance(adversaries, (list, tuple)) or not all(isinstance(a, str) and a for a in adversaries):
            raise FedmiaError(f"attack {where or name!r}: adversaries must be names such as server, "
                              "querier or client:19")
        attack = attack_class(name, family)
        attack(**params)
        ordered = {key: params[key] for key in attack.parameters if key in params}
        return cls(name, ordered, tuple(adversaries), family)


#: What each family's errors suggest writing.
EXAMPLES = {MEMBERSHIP: "loss,rmia:refs=2", INVERSION: "inverting-gradients:restarts=2,mi-face"}


def parse_attack_specs(items: Any, source: str = "--attacks", family: str = MEMBERSHIP) -> tuple[AttackSpec, ...]:
    """A list of attack strings or tables, each label once; membership attacks need at least
    one, inversion attacks may be none."""
    example = EXAMPLES[family]
    if isinstance(items, str):
        if any(not part.strip() for part in items.split(",")):
            raise FedmiaError(f"{source} {items!r} has an empty name; write e.g. {source} {example}")
        items = items.split(",")
    if not isinstance(items, (list, tuple)) or (family == MEMBERSHIP and not items):
        raise FedmiaError(f"{source} must list at least one attack, e.g. {example}")
    specs = tuple(AttackSpec.parse(item, family) if isinstance(item, str) else AttackSpec.from_table(item, None, family)
                  for item in items)
    labels = [spec.label for spec in specs]
    for position, label in enumerate(labels):
        if label in labels[:position]:
            raise FedmiaError(f"attack {label!r} is listed twice in {source}; list each attack once")
    return specs
