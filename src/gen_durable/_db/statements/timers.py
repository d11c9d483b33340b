"""Timers: waits that end at their deadline, and when a queue next has work (SPEC §19).

A parked row with a deadline sits in ``gen_durable_deadline`` (queue, await_deadline),
a partial index of parked rows with a deadline only: the timer reads the due end of
it, so its cost follows the timers that are due, never the parked population.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from ..statement import Statement
from .common import clear_guard
from .pick import PRIORITIES


@dataclass(frozen=True, slots=True)
class Fired:
    """A wait the timer ended: the row is runnable again, at the same step."""

    id: int
    queue: str


# One index range per queue (`LATERAL` with the queue fixed, so the scan stops at the
# first deadline still to come), SKIP LOCKED: a row a delivery holds is left to that
# delivery, which wakes it by its signal (§27.1) — the next pass sees it no longer
# parked. A row the timer locked first is flipped here; the delivery that waited on
# the lock then finds it runnable, flips nothing and stores its signal, which the
# step sees in `ctx.awaited` with `timed_out` set. Either way one wake, nothing lost.
# `until` (NULL: now) is time as a parameter: a test helper fires every deadline up to
# an instant of its choosing ('infinity': all of them) with this same statement.
# The deadline stays on the row: the pick turns it into `timed_out`. It is also the
# row's `eligible_at`: the row has been due since then, so among equal priorities it
# runs before work that became due after its deadline (as a delayed Next does).
FIRE_TIMERS = Statement(
    "fire_timers",
    "Make parked rows whose deadline has passed runnable, up to `limit` per queue",
    f"""
WITH due AS (
    SELECT d.id FROM unnest(%(queues)s::text[]) AS q(name) CROSS JOIN LATERAL (
        SELECT g.id FROM {{s}}.gen_durable g
        WHERE g.queue = q.name AND g.status = 'awaiting_signal'
          AND g.await_deadline IS NOT NULL
          AND g.await_deadline <= coalesce(%(until)s::timestamptz, now())
        ORDER BY g.await_deadline
        LIMIT %(limit)s
        FOR NO KEY UPDATE OF g SKIP LOCKED
    ) d
), flipped AS (
    UPDATE {{s}}.gen_durable g
    SET status = 'runnable', {clear_guard("g", "'runnable'")},
        eligible_at = g.await_deadline, updated_at = now()
    WHERE g.id = ANY (ARRAY(SELECT id FROM due)) AND g.status = 'awaiting_signal'
    RETURNING g.id, g.queue
), nudge AS (
    SELECT pg_notify(%(channel)s, f.queue) FROM (SELECT DISTINCT queue FROM flipped) f
)
SELECT f.id, f.queue FROM flipped f WHERE (SELECT count(*) FROM nudge) >= 0
""",
    {"queues": "text[]", "limit": "int8", "until": "timestamptz", "channel": "text"},
    Fired,
)


@dataclass(frozen=True, slots=True)
class Due:
    """The queue's next deadline and the eligible time of its next runnable row
    (None: nothing of that kind)."""

    deadline: dt.datetime | None
    runnable: dt.datetime | None
    now: dt.datetime  # the database's clock: due times are compared with it, not ours


# The first entry of gen_durable_deadline for the queue, and the earliest eligible_at
# over the queue's runnable priorities: one probe of gen_durable_pick per priority
# (the loose index scan of the pick), for the first PICK_WALK priorities — a plain
# min(eligible_at) over the queue would read every sleeping row. Rows of priorities
# past the walk are found by the scheduler's own polling.
NEXT_DUE = Statement(
    "next_due",
    "When the queue's next deadline falls and its next runnable row becomes due",
    f"""
WITH RECURSIVE prio AS ({PRIORITIES})
SELECT (SELECT g.await_deadline FROM {{s}}.gen_durable g
        WHERE g.queue = %(queue)s AND g.status = 'awaiting_signal'
          AND g.await_deadline IS NOT NULL
        ORDER BY g.await_deadline LIMIT 1) AS deadline,
       (SELECT min((SELECT g.eligible_at FROM {{s}}.gen_durable g
                    WHERE g.queue = %(queue)s AND g.priority = p.priority
                      AND g.status = 'runnable'
                    ORDER BY g.eligible_at LIMIT 1))
        FROM prio p WHERE p.priority IS NOT NULL) AS runnable,
       now() AS now
""",
    {"queue": "text"},
    Due,
)
