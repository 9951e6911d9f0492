"""Which uploads the server keeps: every round's (for trajectory attacks), or fewer to save
disk on large federations. A client's last upload is always kept."""

from __future__ import annotations

from dataclasses import dataclass

from fedmia.errors import FedmiaError


@dataclass(frozen=True)
class KeepPolicy:
    """`all`, `last`, or `every:N` (rounds N, 2N, ..., plus each client's last upload)."""

    every: int | None

    @classmethod
    def parse(cls, text: str) -> KeepPolicy:
        if text == "all":
            return cls(1)
        if text == "last":
            return cls(None)
        if text.startswith("every:") and text[6:].isdigit() and int(text[6:]) >= 1:
            return cls(int(text[6:]))
        raise FedmiaError(f"keep-uploads {text!r} is not all, last or every:N (N >= 1); fix --keep-uploads")

    def keeps(self, server_round: int) -> bool:
        """Whether an upload of `server_round` stays on disk once a later one arrives."""
        return self.every is not None and server_round % self.every == 0
