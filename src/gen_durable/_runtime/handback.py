"""Rows whose machine this node lacks: handed back, said once a minute (SPEC §13).

A rolling deploy leaves nodes without the code of a new machine (or version). Such a
row is not failed and not lost: it goes back to ``runnable`` after ``unknown_retry``
seconds so a node with the code can run it, with a reason in ``last_error`` naming
the machine, the version and this node — where ``gen-durable show`` and ``status``
find it. Every offer of such a row comes back here, on every node without the code,
so the ERROR line is rate-limited per (machine, version); telemetry fires every time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import Any

from .. import telemetry
from ..machine import Machine
from ..registry import REGISTRY
from .executor import Claim

log = logging.getLogger("gen_durable")

NOT_FOUND_LOG_EVERY = 60.0
"""Seconds between two ERROR lines for one missing (machine, version) on a node."""


class EveryInterval:
    """Lets a key through at most once per ``interval`` seconds, counting what it held back.

    ``allow(key, n)`` returns None to stay quiet, else how many were held back since
    the key last got through (0 the first time)."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._next: dict[Hashable, float] = {}
        self._held: dict[Hashable, int] = {}

    def allow(self, key: Hashable, n: int = 1) -> int | None:
        now = self._clock()
        due = self._next.get(key)
        if due is not None and now < due:
            self._held[key] = self._held.get(key, 0) + n
            return None
        self._next[key] = now + self.interval
        return self._held.pop(key, 0)


class UnknownMachines:
    """Hands back claims of unknown machines; one per node, shared by its queues."""

    def __init__(
        self,
        release: Callable[..., Awaitable[int]],
        node_id: str,
        delay: float,
        known: Callable[[], Iterable[type[Machine]]],
    ) -> None:
        self._release = release
        self._node_id = node_id
        self._delay = delay
        self._known = known
        self.log_limit = EveryInterval(NOT_FOUND_LOG_EVERY)

    async def hand_back(self, claims: list[Claim]) -> None:
        groups: dict[tuple[str, int], list[Claim]] = {}
        for c in claims:
            groups.setdefault((c.fsm, c.fsm_version), []).append(c)
        for (fsm, version), group in groups.items():
            reason = (
                f"no machine {fsm!r} v{version} on node {self._node_id} "
                f"(handed back, retried in {self._delay:g}s)"
            )
            try:
                await self._release(group, delay=self._delay, reason=reason)
            except Exception:
                log.exception("handing back %d unknown-machine rows failed", len(group))
            held = self.log_limit.allow((fsm, version), len(group))
            if held is not None:
                log.error(
                    "%s: %d instance(s)%s%s",
                    reason,
                    len(group),
                    self._versions_here(fsm),
                    f"; {held} more handed back since the last report" if held else "",
                )
            if telemetry.listening("registry.not_found"):
                telemetry.emit(
                    "registry.not_found",
                    {"count": len(group)},
                    {"fsm": fsm, "fsm_version": version},
                )

    def _versions_here(self, fsm: str) -> str:
        """`` (this node has v1, v3)`` when other versions of the machine are registered:
        the usual deploy mistake is a version bump that reached only some nodes."""
        known: Any = (*self._known(), *REGISTRY)
        versions = sorted({m.__gd_version__ for m in known if m.__gd_name__ == fsm})
        return f" (this node has {', '.join(f'v{v}' for v in versions)})" if versions else ""
