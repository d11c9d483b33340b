"""The claims a node holds, shared by its schedulers and its heartbeat (SPEC §8).

Each queue's scheduler registers what it holds — running and buffered rows — and the
heartbeat extends exactly that. A scheduler that stops (drained, or failed beyond
restarting) unregisters, so its claims are no longer extended: whatever it could not
hand back becomes reapable instead of being held forever by a node that cannot run it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .executor import Claim


class Holdings:
    def __init__(self) -> None:
        self._sources: dict[str, Callable[[], Iterable[Claim]]] = {}

    def register(self, owner: str, source: Callable[[], Iterable[Claim]]) -> None:
        self._sources[owner] = source

    def unregister(self, owner: str) -> None:
        self._sources.pop(owner, None)

    def owners(self) -> list[str]:
        return list(self._sources)

    def held(self) -> list[Claim]:
        """Every claim held now, by every registered owner."""
        return [c for source in self._sources.values() for c in source()]
