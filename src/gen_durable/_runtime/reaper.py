"""What one reaper statement did, told to the logs, telemetry and stats (SPEC §5, §8, §14).

The statement returns ``(id, new status)`` for every expired lease it took: ``runnable``
rows go back to the queue (``reaper.reaped``); ``failed`` rows hit the crash limit
(``reaper.poisoned``) — their step took every worker that ran it down, and the row
stays failed for an operator to look at instead of crashing one more node.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from .. import telemetry
from .._db.queries import Queries, Stmt
from .._db.statements.leases import Reaped
from .config import Config
from .service import Service
from .stats import Stats

log = logging.getLogger("gen_durable")


def report_reaped(rows: Sequence[Reaped], stats: Stats, crash_limit: int) -> bool:
    """Log and emit one reaper batch; True when it changed any row."""
    reaped = [r.id for r in rows if r.status == "runnable"]
    poisoned = [r.id for r in rows if r.status != "runnable"]
    stats.add(statements=1, commits=1, reaped=len(reaped), poisoned=len(poisoned))
    if reaped:
        log.warning("reaper: %d expired lease(s) returned to runnable", len(reaped))
        if telemetry.listening("reaper.reaped"):
            telemetry.emit("reaper.reaped", {"count": len(reaped)}, {"ids": reaped})
    if poisoned:
        log.error(
            "reaper: failed %d instance(s) whose lease expired crash_limit (%d) times on "
            "one step (the step kills or freezes its worker): ids %s",
            len(poisoned),
            crash_limit,
            poisoned,
        )
        if telemetry.listening("reaper.poisoned"):
            telemetry.emit("reaper.poisoned", {"count": len(poisoned)}, {"ids": poisoned})
    return bool(rows)


class Reaper(Service):
    """Every ``reap_interval``, returns expired leases to the queue (or fails rows at
    the crash limit), in bounded batches while full ones come back (SPEC §8)."""

    name = "reaper"

    def __init__(
        self,
        config: Config,
        queries: Queries,
        fetch: Callable[[Stmt], Awaitable[list[Any]]],
        stats: Stats,
        woke: Callable[[], None],
        db_errors: tuple[type[BaseException], ...],
    ) -> None:
        self._config = config
        self._queries = queries
        self._fetch = fetch
        self._stats = stats
        self._woke = woke
        self._db_errors = db_errors

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._config.reap_interval)
            try:
                await self.sweep()
            except self._db_errors as exc:
                log.warning("reaper pass failed: %s", exc)

    async def sweep(self) -> None:
        limit = self._config.reap_batch
        while True:
            stmt = self._queries.reap(limit, crash_limit=self._config.crash_limit)
            rows = await self._fetch(stmt)
            if report_reaped(rows, self._stats, self._config.crash_limit):
                self._woke()
            if len(rows) < limit:
                return
