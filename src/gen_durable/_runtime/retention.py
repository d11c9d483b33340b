"""The retention sweep (SPEC §22): terminal rows past their retention are deleted.

Every node runs it (``gc=False`` opts one out); there is no leader. Each batch is one
short statement that locks its rows with ``SKIP LOCKED``, so two nodes sweeping at
once take different rows, and walks ``gen_durable_terminal`` from the oldest row of
one status, so it reads about as many rows as it deletes however large the table.
A pass is bounded in rows per batch and in time; whatever is left waits for the next
pass. It touches terminal rows only, which no hot statement reads or locks, so it
never blocks the picker or an outcome (§27.6). A child whose parent is still live is
kept: the parent may still read it in ``ctx.childs``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from .. import telemetry
from .._db.statement import Stmt
from .._db.statements.listing import SWEEP
from .config import Config
from .service import Service
from .stats import Stats

log = logging.getLogger("gen_durable")

GC_BATCH = 1000
"""Rows per retention statement."""

GC_PASS_SECONDS = 5.0
"""How long one pass may keep deleting before it yields until the next interval."""


class Retention(Service):
    name = "retention"

    def __init__(
        self,
        config: Config,
        fetch: Callable[[Stmt], Awaitable[list[Any]]],
        stats: Stats,
        node_id: str,
        db_errors: tuple[type[BaseException], ...],
    ) -> None:
        self._config = config
        self._fetch = fetch
        self._stats = stats
        self._node_id = node_id
        self._db_errors = db_errors

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._config.gc_interval)
            try:
                await self.sweep()
            except self._db_errors as exc:
                log.warning("retention sweep failed: %s", exc)

    async def sweep(self) -> int:
        """One pass over every status with a retention; returns the rows deleted."""
        ages = self._config.retention
        if not isinstance(ages, Mapping):
            return 0
        deadline = time.monotonic() + GC_PASS_SECONDS
        total = 0
        for status, age in ages.items():
            while time.monotonic() < deadline:
                params = {"age": float(age), "limit": GC_BATCH}
                rows = await self._fetch(SWEEP[status].bind(self._config.schema, params))
                self._stats.add(statements=1, commits=1)
                total += len(rows)
                if rows and telemetry.listening("gc.swept"):
                    telemetry.emit(
                        "gc.swept", {"count": len(rows)}, {"status": status, "node": self._node_id}
                    )
                if len(rows) < GC_BATCH:
                    break
        if total:
            log.info("retention: deleted %d expired terminal row(s)", total)
        return total
