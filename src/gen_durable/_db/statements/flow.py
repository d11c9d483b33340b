"""Flow control in SQL (SPEC §23): the pick's K-slot guard and token-bucket debit,
and the statements that configure rate limits and record schedules.

The pick fragments are written so that a batch with no ``partition_limit`` > 1 and
no ``rate_limit`` does no extra work: the K-slot probe sits in the ``ELSE`` branch of
a ``CASE`` a K = 1 row never reaches, and the bucket CTEs run over the batch's
rate-limited rows only — none, for an unlimited queue, so no bucket is read.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from ...flow import RateLimit
from ..statement import Statement

UNKNOWN_HOLD = 1.0
"""Seconds a row naming an undefined rate limit waits before the pick looks again."""

# A key with K > 1: the executing rows of the key plus the key's eligible runnable
# rows more urgent than this one must leave room, so the K most urgent rows run and
# never a later one ahead of them. The test is the schema's function
# `gen_durable_partition_room` (schema.py, FLOW_CONTROL_UP), called only in the CASE
# branch that K = 1 rows never reach. A function, not the subqueries themselves:
# the planner adds the cost of every CASE branch to every candidate, and the inline
# counts made the pick's generic plan look three to ten times dearer than without
# them, enough to cross `jit_above_cost` on a large table (a JIT compile of the whole
# statement on every pick). The function declares the small cost it has.
K_GUARD = """{s}.gen_durable_partition_room(
                g.partition_key, g.partition_limit, g.priority, g.eligible_at, g.id)"""

# The slot a K > 1 row takes: the n-th free one of 0..K-1 for the n-th row of its key
# in this batch, so the batch's rows of a key take distinct slots. Seen from the
# statement's snapshot; a slot taken meanwhile by another node's pick makes the
# unique index refuse this pick, which the caller retries (as for K = 1).
SLOT = """CASE WHEN g.partition_limit = 1 THEN 0 ELSE coalesce((
        SELECT f.n FROM generate_series(0, g.partition_limit - 1) f(n)
        WHERE NOT EXISTS (
            SELECT 1 FROM {s}.gen_durable e
            WHERE e.partition_key = g.partition_key AND e.partition_slot = f.n
              AND e.status = 'executing')
        ORDER BY f.n
        OFFSET (SELECT c.rn - 1 FROM chosen c WHERE c.id = g.id) LIMIT 1), 0) END"""

RESERVE_AHEAD = 0.25
"""Seconds ahead a pick may take a token not due yet: the row is claimed now and its
step starts when the token is due (SPEC §23). Short beside a lease; at a slow rate
(a token further apart than this) a pick takes only the tokens already there."""

# Tokens in a bucket `b` now, refilled since its stamp and capped at the burst, and
# the tokens a pick gives: the batch's rows of the bucket (EXCLUDED.taken), at most
# those due within RESERVE_AHEAD, never a negative count. One probe of the limit.
_DEBIT = f"""SELECT v.give, v.refill - v.give, greatest(b.stamp, now())
        FROM (SELECT r.refill, greatest(least(EXCLUDED.taken,
                         floor(r.refill + l.rate / l.per * {RESERVE_AHEAD})), 0) AS give
              FROM {{s}}.rate_limits l CROSS JOIN LATERAL (
                  SELECT least(l.burst, b.tokens + extract(epoch FROM
                      greatest(now() - b.stamp, interval '0')) * l.rate / l.per) AS refill) r
              WHERE l.name = b.name) v"""

# `lim`: the batch's rate-limited rows, ranked per bucket. `debit` takes what each
# bucket can give in one upsert per bucket: ON CONFLICT DO UPDATE locks the bucket
# row and computes from its latest committed version, so concurrent picks on any
# node serialise on the bucket and never take the same token twice; buckets are
# taken in (name, part) order so two picks cannot deadlock. A new bucket starts
# full. It gives the tokens there are and those due within RESERVE_AHEAD: the k-th
# row of a bucket with `refill` tokens gets the k-th token, due (k - refill) x gap
# from now (now, when that is not positive), and the bucket's tokens go below zero
# by what it promised. A claim whose token is not due yet comes back with `due` set
# (seconds from the end of the statement, so that the time the statement took is not
# added to it) and the scheduler starts it then: the debits, on any node, are one token sequence
# at the rate however late the next pick comes, where a pick that could only take
# the tokens already there lost every one the burst cap cut off while it was late.
# `taken` carries the count out (RETURNING sees only new values). Being part of the
# claim's statement, a pick that fails takes nothing. A name without a configured
# limit gets no `debit` row. The limits are read by correlated subqueries (never a
# join): they run once per bucket of the batch, so a batch without rate-limited rows
# never reads `rate_limits` at all, whatever it holds.
# `held`: rows the bucket cannot serve within RESERVE_AHEAD are not claimed; each
# becomes eligible when its token is due (the k-th one after k tokens), so it
# neither occupies later picks' slots nor bounces; rows naming an unknown limit look
# again after UNKNOWN_HOLD. Both come back as rows with `held` set, for telemetry.
BUCKETS = f"""lim AS (
    SELECT c.id, split_part(c.rate_limit, ':', 1) AS name,
           substr(c.rate_limit, length(split_part(c.rate_limit, ':', 1)) + 2) AS part,
           row_number() OVER (
               PARTITION BY c.rate_limit ORDER BY c.priority, c.eligible_at, c.id) AS rn
    FROM chosen c WHERE c.rate_limit IS NOT NULL
), debit AS (
    INSERT INTO {{s}}.rate_buckets AS b (name, part, tokens, taken, stamp)
    SELECT w.name, w.part, x.burst - x.give, x.give, now()
    FROM (SELECT name, part, count(*) AS n FROM lim GROUP BY name, part) w
    CROSS JOIN LATERAL (
        SELECT l.burst, least(w.n, floor(l.burst + l.rate / l.per * {RESERVE_AHEAD})) AS give
        FROM {{s}}.rate_limits l WHERE l.name = w.name OFFSET 0) x
    ORDER BY w.name, w.part
    ON CONFLICT (name, part) DO UPDATE SET (taken, tokens, stamp) = ({_DEBIT})
    RETURNING b.name, b.part, b.taken, b.tokens, b.stamp,
        (SELECT l.per / l.rate FROM {{s}}.rate_limits l WHERE l.name = b.name) AS gap
), held AS (
    UPDATE {{s}}.gen_durable g SET
        eligible_at = now() + make_interval(secs => CASE WHEN d.name IS NULL
            THEN {UNKNOWN_HOLD} ELSE greatest(l.rn - d.taken - d.tokens, 0.001) * d.gap END),
        updated_at = now()
    FROM lim l LEFT JOIN debit d ON d.name = l.name AND d.part = l.part
    WHERE g.id = l.id AND (d.name IS NULL OR l.rn > d.taken)
    RETURNING g.id, g.fsm, g.fsm_version, g.step, g.priority, g.partition_key, g.rate_limit,
        CASE WHEN d.name IS NULL THEN 'unknown' ELSE 'throttled' END AS held,
        extract(epoch FROM g.eligible_at - now())::float8 AS due
), served AS (
    SELECT id, NULL::float8 AS due FROM chosen WHERE rate_limit IS NULL
    UNION ALL
    SELECT l.id, CASE WHEN l.rn > d.taken + d.tokens
        THEN extract(epoch FROM d.stamp) + (l.rn - d.taken - d.tokens) * d.gap END
    FROM lim l JOIN debit d ON d.name = l.name AND d.part = l.part
    WHERE l.rn <= d.taken
)"""


SET_RATE_LIMIT = Statement(
    "set_rate_limit",
    "Create or change a rate limit; its buckets keep their tokens, capped at the new burst",
    """
INSERT INTO {s}.rate_limits AS l (name, rate, per, burst)
VALUES (%(name)s, %(rate)s, %(per)s, %(burst)s)
ON CONFLICT (name) DO UPDATE SET
    rate = EXCLUDED.rate, per = EXCLUDED.per, burst = EXCLUDED.burst, updated_at = now()
RETURNING l.name, l.rate, l.per, l.burst, l.updated_at
""",
    {"name": "text", "rate": "float8", "per": "float8", "burst": "float8"},
    RateLimit,
)


@dataclass(frozen=True, slots=True)
class Deleted:
    name: str


DELETE_RATE_LIMIT = Statement(
    "delete_rate_limit",
    "Delete a rate limit and its buckets; rows naming it are held until it is defined again",
    "DELETE FROM {s}.rate_limits WHERE name = %(name)s RETURNING name",
    {"name": "text"},
    Deleted,
)

LIST_RATE_LIMITS = Statement(
    "list_rate_limits",
    "Every configured rate limit, by name",
    "SELECT name, rate, per, burst, updated_at FROM {s}.rate_limits ORDER BY name",
    {},
    RateLimit,
)


@dataclass(frozen=True, slots=True)
class ScheduleRow:
    """A schedule as the database last saw it: its cron, zone and last slot inserted."""

    name: str
    cron: str
    timezone: str
    last_slot: dt.datetime


# A schedule seen for the first time records its current slot as done, so it starts
# at the next one (SPEC §23); a known one returns its last slot. The cron and zone
# are refreshed so `gen-durable schedules` shows what the nodes run.
SCHEDULE_SEEN = Statement(
    "schedule_seen",
    "Register a schedule (first sighting: its current slot counts as done) and read it",
    """
INSERT INTO {s}.schedules AS c (name, cron, timezone, last_slot)
VALUES (%(name)s, %(cron)s, %(timezone)s, %(slot)s)
ON CONFLICT (name) DO UPDATE SET cron = EXCLUDED.cron, timezone = EXCLUDED.timezone,
    updated_at = now()
RETURNING c.name, c.cron, c.timezone, c.last_slot
""",
    {"name": "text", "cron": "text", "timezone": "text", "slot": "timestamptz"},
    ScheduleRow,
)

# Only ever moves forward: a node with a late clock cannot move it back.
SCHEDULE_ADVANCE = Statement(
    "schedule_advance",
    "Record that a schedule's slot was inserted (forward only)",
    """
UPDATE {s}.schedules SET last_slot = %(slot)s, updated_at = now()
WHERE name = %(name)s AND last_slot < %(slot)s
RETURNING name, cron, timezone, last_slot
""",
    {"name": "text", "slot": "timestamptz"},
    ScheduleRow,
)

LIST_SCHEDULES = Statement(
    "list_schedules",
    "Every schedule the nodes have registered, by name",
    "SELECT name, cron, timezone, last_slot FROM {s}.schedules ORDER BY name",
    {},
    ScheduleRow,
)
