"""The timer: waits that end at their deadline, and sleepers that become due (SPEC §19).

One service per node, for the queues it serves. Each pass

1. ends the waits whose deadline has passed (``fire_timers``: the due end of the
   deadline index, in batches of :data:`TIMER_BATCH` per queue while batches come
   back full), which NOTIFYs every node serving those queues and nudges this node's
   schedulers at once; emits ``await.timeout`` with the count;
2. asks each queue when its next deadline falls and when its next runnable row is due
   (``next_due``: index probes, never a scan of the parked or sleeping rows), wakes the
   scheduler of a queue whose next row is due now — an idle scheduler backs off to
   ``max_poll_interval``, which would make a 2 s durable sleep land up to 5 s late —
   and sleeps until the earliest of those times.

It never sleeps longer than :func:`period` (1 s, or ``poll_interval`` when larger):
deadlines and sleepers committed meanwhile by other nodes or clients are found on the
next pass, so a wait ends within about a second of its deadline on any node serving
its queue. Why a service and not part of the pick: the pick runs per queue on every
refill of a busy node, and a deadline check there would cost every pick a probe;
here it costs one pass a second per node, whatever the load (docs/architecture.md).

Test signal: :attr:`Timers.passes` counts finished passes. Its statements are counted
apart (``timer_statements``), not in ``statements``: that counter is the per-step cost
the benchmark and the cost tests read, and the timer's passes follow the clock, not
the steps.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from .. import telemetry
from .._db.queries import Queries, Stmt
from .config import Config
from .service import Service
from .stats import Stats

log = logging.getLogger("gen_durable")

TIMER_BATCH = 1000
"""Waits ended per queue by one statement; a full batch is followed by another at once."""

_SLACK = 0.002
"""Seconds past a due time the timer wakes, so the database's now() has reached it."""


def period(config: Config) -> float:
    """The longest the timer sleeps between passes (§19: 1 s or ``poll_interval``)."""
    return max(1.0, config.poll_interval)


class Timers(Service):
    name = "timers"

    def __init__(
        self,
        config: Config,
        queries: Queries,
        fetch: Callable[[Stmt], Awaitable[list[Any]]],
        stats: Stats,
        wake: Callable[[str | None], None],
        db_errors: tuple[type[BaseException], ...],
    ) -> None:
        self._config = config
        self._queries = queries
        self._fetch = fetch
        self._stats = stats
        self._wake = wake
        self._db_errors = db_errors
        self._queues = sorted(config.queues)
        self.passes = 0

    async def run(self) -> None:
        while True:
            try:
                pause = await self.tick()
            except self._db_errors as exc:
                log.warning("timer pass failed: %s", exc)
                pause = period(self._config)
            await asyncio.sleep(pause)

    async def tick(self) -> float:
        """One pass; returns the seconds until the next one is due."""
        await self.fire()
        pause = period(self._config)
        for queue in self._queues:
            rows = await self._fetch(self._queries.next_due(queue))
            self._stats.add(timer_statements=1)
            due = rows[0]
            if due.runnable is not None:
                until = (due.runnable - due.now).total_seconds()
                if until <= 0:
                    self._wake(queue)
                else:
                    pause = min(pause, until + _SLACK)
            if due.deadline is not None:
                pause = min(pause, max(0.0, (due.deadline - due.now).total_seconds()) + _SLACK)
        self.passes += 1
        return pause

    async def fire(self) -> int:
        """End every wait whose deadline has passed; returns how many."""
        total = 0
        while True:
            rows = await self._fetch(self._queries.fire_timers(self._queues, TIMER_BATCH))
            self._stats.add(timer_statements=1, timeouts=len(rows))
            if not rows:
                return total
            total += len(rows)
            per_queue = Counter(r.queue for r in rows)
            for queue in per_queue:
                self._wake(queue)
            if telemetry.listening("await.timeout"):
                telemetry.emit("await.timeout", {"count": len(rows)}, {"ids": [r.id for r in rows]})
            if max(per_queue.values()) < TIMER_BATCH:
                return total
