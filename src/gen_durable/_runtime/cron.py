"""The schedules service: one instance per due slot, cluster-wide (SPEC §23).

Every node given schedules runs this loop; none is a leader. At each slot it reads
the schedule's row (``schedule_seen``: a schedule seen for the first time records its
current slot as done, so it starts at the next), inserts the slot's instance under
the key ``cron:<name>:<slot>`` — whose scope holds every status, so a second node's
insert of the same slot is dropped by the unique index even after the first
instance finished — and moves ``last_slot`` forward. Only the latest slot at or
before now is ever inserted: after downtime that is the one catch-up slot, with no
backfill storm. A crash between the insert and the advance repeats the insert,
which the key makes a no-op.

A user's bug (a ``state`` callable that raises, a state the model refuses) is logged
for that schedule and slot; the loop and the node go on.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import psycopg

from .. import telemetry
from .._db.queries import Queries, Stmt
from .._inputs import build_insert
from ..schedule import Schedule
from .service import Service

log = logging.getLogger("gen_durable")

MAX_SLEEP = 30.0
"""Longest wait between two looks, so a changed clock is noticed."""


class ScheduleService(Service):
    """Wakes at each schedule's next slot and inserts what is due (none: a leader)."""

    name = "schedules"

    def __init__(
        self,
        schedules: Sequence[Schedule],
        queries: Queries,
        fetch: Callable[[Stmt], Awaitable[list[Any]]],
    ) -> None:
        self._schedules = list(schedules)
        self._q = queries
        self._fetch = fetch

    async def run(self) -> None:
        while True:
            now = dt.datetime.now(dt.UTC)
            for sched in self._schedules:
                await self.tick(sched, now)
            due = min(s.after(now) for s in self._schedules)
            wait = (due - dt.datetime.now(dt.UTC)).total_seconds()
            # A hair past the slot, so the next look's `latest` is that slot.
            await asyncio.sleep(min(max(wait, 0.0) + 0.005, MAX_SLEEP))

    async def tick(self, sched: Schedule, now: dt.datetime) -> int | None:
        """Insert ``sched``'s latest slot at ``now`` unless done; the new id, if any."""
        slot = sched.latest(now)
        try:
            seen = await self._fetch(
                self._q.schedule_seen(sched.name, sched.cron, sched.timezone, slot)
            )
            if seen[0].last_slot >= slot:
                return None
            rows = build_insert([sched.spec(slot)])
            inserted = await self._fetch(self._q.insert(rows))
            await self._fetch(self._q.schedule_advance(sched.name, slot))
        except (psycopg.OperationalError, psycopg.InterfaceError, OSError) as exc:
            log.warning("schedule %s: slot %s not inserted yet (%s)", sched.name, slot, exc)
            return None
        except Exception:
            log.exception("schedule %s: slot %s could not be inserted", sched.name, slot)
            return None
        ids = inserted[0].ids if inserted else None
        if not ids:
            return None  # another node inserted it first
        if telemetry.listening("schedule.inserted"):
            telemetry.emit(
                "schedule.inserted",
                {"count": 1},
                {"schedule": sched.name, "slot": slot, "id": ids[0]},
            )
        return int(ids[0])
