"""The claims a node holds, shared by its schedulers and its heartbeat (SPEC §8).

Each queue's scheduler registers what it holds — running and buffered rows — and the
heartbeat extends exactly that. A scheduler that stops (drained, or failed beyond
restarting) unregisters, so its claims are no longer extended: whatever it could not
hand back becomes reapable instead of being held forever by a node that cannot run it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from .executor import Claim

Renewed = Callable[[set[int], float], None]
"""Told which held rows a heartbeat extended, and until when (``time.monotonic()``)."""


class Holdings:
    def __init__(self) -> None:
        self._sources: dict[str, Callable[[], Iterable[Claim]]] = {}
        self._renewed: dict[str, Renewed] = {}

    def register(
        self, owner: str, source: Callable[[], Iterable[Claim]], renewed: Renewed | None = None
    ) -> None:
        self._sources[owner] = source
        if renewed is not None:
            self._renewed[owner] = renewed

    def unregister(self, owner: str) -> None:
        self._sources.pop(owner, None)
        self._renewed.pop(owner, None)

    def renewed(self, ids: set[int], until: float) -> None:
        """The heartbeat extended the leases of ``ids``: they hold at least ``until``."""
        for tell in self._renewed.values():
            tell(ids, until)

    def owners(self) -> list[str]:
        return list(self._sources)

    def held(self) -> list[Claim]:
        """Every claim held now, by every registered owner."""
        return [c for source in self._sources.values() for c in source()]
