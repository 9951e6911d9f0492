"""Release defenses: what the released model's answers go through before a querier sees them.
They change the scores, never the predicted label. `RELEASE_DEFENSES` is the registry by
name; a spec is `name[:key=value]...` (`memguard:epsilon=0.5`, `top-k:k=1`) like an attack's,
or a table with `name` and its parameters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedmia.attacks.spec import _format_value, _parse_value
from fedmia.errors import FedmiaError
from fedmia.release.base import ReleaseDefense
from fedmia.release.memguard import MemGuardRelease
from fedmia.release.top_k import TopKRelease

RELEASE_DEFENSES: dict[str, type[ReleaseDefense]] = {cls.name: cls for cls in (MemGuardRelease, TopKRelease)}


def release_class(name: str) -> type[ReleaseDefense]:
    if name not in RELEASE_DEFENSES:
        raise FedmiaError(f"unknown release defense {name!r}; choose from {', '.join(RELEASE_DEFENSES)}")
    return RELEASE_DEFENSES[name]


@dataclass(frozen=True)
class ReleaseSpec:
    """One release defense: its registered name and the parameters given (not the defaults),
    checked when the spec is made."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The canonical spec text, parameters in the defense's order."""
        return ":".join([self.name, *(f"{key}={_format_value(value)}" for key, value in self.params.items())])

    def build(self) -> ReleaseDefense:
        return release_class(self.name)(**self.params)

    @classmethod
    def parse(cls, text: str) -> ReleaseSpec:
        """`name:key=value:...`; every part after the name must be `key=value`."""
        name, *parts = [part.strip() for part in text.strip().split(":")]
        params: dict[str, Any] = {}
        for part in parts:
            key, sep, value = (piece.strip() for piece in part.partition("="))
            if not sep or not key or not value:
                raise FedmiaError(f"release defense {text!r}: {part!r} is not key=value; "
                                  "write e.g. memguard:epsilon=0.5")
            params[key] = _parse_value(value)
        return cls.from_table({"name": name, **params}, text)

    @classmethod
    def from_table(cls, table: Any, where: str | None = None) -> ReleaseSpec:
        """A table (or a parsed string): `name` plus the defense's parameters."""
        if not isinstance(table, dict) or not isinstance(table.get("name"), str) or not table["name"]:
            raise FedmiaError(f"release defense {where or table!r} needs a name; write e.g. "
                              'memguard:epsilon=0.5 or a table with name = "memguard"')
        params = {key: value for key, value in table.items() if key != "name"}
        defense = release_class(table["name"])
        defense(**params)
        return cls(table["name"], {key: params[key] for key in defense.parameters if key in params})


def make_release(text: str) -> ReleaseDefense:
    """A release defense from its spec text (`top-k`, `memguard:epsilon=0.5`), parameters checked."""
    return ReleaseSpec.parse(text).build()


__all__ = [
    "RELEASE_DEFENSES",
    "MemGuardRelease",
    "ReleaseDefense",
    "ReleaseSpec",
    "TopKRelease",
    "make_release",
    "release_class",
]
