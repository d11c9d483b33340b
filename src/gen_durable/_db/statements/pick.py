"""The pick: claiming a batch of one queue's runnable rows (SPEC §8, §9, §17, §18.8)."""

from __future__ import annotations

from dataclasses import dataclass

from ...machine import Child, Signal
from .. import codec
from ..statement import Statement
from .common import CHILD_JSON, SIGNAL_JSON, clear_guard
from .flow import BUCKETS, K_GUARD, SLOT

PICK_WALK = 16
"""Priorities the pick visits one by one before it scans the rest of the queue at once."""


@dataclass(slots=True)
class Claim:
    """A row claimed by a pick, as the executor needs it (columns of :data:`PICK`)."""

    id: int
    fsm: str
    fsm_version: int
    step: str
    state_text: str
    attempt: int
    awaits: list[str] | None
    priority: int
    partition_key: str | None
    inbox_text: str | None
    childs_text: str | None
    token: str
    timed_out: bool = False
    rate_limit: str | None = None
    held: str | None = None
    """Not a claim: the row's bucket was empty (``throttled``) or its rate limit is not
    defined (``unknown``); it stays runnable, due in ``due`` seconds (SPEC §23).
    ``limited``: the plain pick met a rate-limited row and left it (``PICK_PLAIN``)."""
    due: float | None = None
    """A claim whose rate-limit token is not due yet (SPEC §23): its step starts in
    ``due`` seconds. A held row: it is due again in ``due`` seconds."""
    trace_context: str | None = None
    """The W3C trace context stored with the row (SPEC §25), None when untraced."""

    def signals(self) -> tuple[Signal, ...]:
        if not self.inbox_text:
            return ()
        return tuple(Signal(*s) for s in codec.loads(self.inbox_text))

    def childs(self) -> tuple[Child, ...]:
        if not self.childs_text:
            return ()
        return tuple(Child(*c) for c in codec.loads(self.childs_text))


# Keys that already have an executing row are skipped by a probe of
# gen_durable_partition_active — written as a closed range rather than `=`, which is
# the same set of keys but gives the planner no equality to hash: with `=` it may
# pick a hashed SubPlan that reads *every* executing row on each pick (seen on a
# million-row table). The second probe, of gen_durable_partition_queue, keeps a key's
# later row from running while an earlier, eligible one is merely locked.
_K1_GUARD = """(NOT EXISTS (
                SELECT 1 FROM {s}.gen_durable e
                WHERE e.partition_key >= g.partition_key AND e.partition_key <= g.partition_key
                  AND e.status = 'executing')
              AND NOT EXISTS (
                SELECT 1 FROM {s}.gen_durable h
                WHERE h.partition_key >= g.partition_key AND h.partition_key <= g.partition_key
                  AND h.status = 'runnable' AND h.eligible_at <= now()
                  AND (h.priority, h.eligible_at, h.id) < (g.priority, g.eligible_at, g.id)))"""
# The full pick: K = 1 rows (every row, unless it asks for more) take the first branch
# of the CASE only, the §9 probes; K > 1 rows count instead (SPEC §23, K_GUARD).
_GUARD = f"""(g.partition_key IS NULL OR CASE WHEN g.partition_limit = 1 THEN {_K1_GUARD}
              ELSE {K_GUARD} END)"""
# The plain pick claims no K > 1 row: it lets them through unprobed, only to see them
# (a K > 1 row behind busy slots must still be noticed, or its key would wait for all
# of them to end), and hands them over to the full pick.
_PLAIN_GUARD = f"(g.partition_key IS NULL OR g.partition_limit > 1 OR {_K1_GUARD})"

PRIORITIES = f"""
    (SELECT g.priority, 1 AS depth FROM {{s}}.gen_durable g
     WHERE g.queue = %(queue)s AND g.status = 'runnable'
     ORDER BY g.priority LIMIT 1)
    UNION ALL
    SELECT (SELECT g.priority FROM {{s}}.gen_durable g
            WHERE g.queue = %(queue)s AND g.status = 'runnable' AND g.priority > p.priority
            ORDER BY g.priority LIMIT 1),
           p.depth + 1
    FROM prio p WHERE p.priority IS NOT NULL AND p.depth < {PICK_WALK}
"""
"""The body of the recursive `prio` CTE: the queue's runnable priorities, most urgent
first, at most PICK_WALK of them (shared by the pick and the timer's ``next_due``)."""


# `prio` lists the queue's runnable priorities, most urgent first, one index probe
# each (a loose index scan; a recursive query yields its rows in the order it finds
# them), for at most PICK_WALK of them. For each, the first branch of `cand` walks
# gen_durable_pick with queue and priority fixed, so `eligible_at <= now()` bounds the
# scan: rows scheduled for later are not read. (One scan over (queue, priority,
# eligible_at) with only the queue fixed steps over every future row of a more urgent
# priority: 25 ms per pick behind a million delayed rows.) Priorities past the walk
# are taken by the second branch, that one scan, from the last walked priority on: a
# queue with thousands of distinct priorities costs PICK_WALK probes more than the
# single scan, never a probe per priority. UNION ALL runs its branches in order and
# the outer LIMIT stops at the batch, so a less urgent priority is only visited when
# the ones before it ran short.
# `chosen` keeps the most urgent K rows per key (K = the row's partition_limit, 1
# unless asked); the others were only locked for this statement and stay runnable.
# The UNIQUE index on executing keys is the cross-node guard: a concurrent pick that
# slipped past the probe fails on it and is retried by the caller.
def _chosen(guard: str) -> str:
    """prio, cand and chosen, the candidates passing ``guard``."""
    return f"""
WITH RECURSIVE prio AS ({PRIORITIES}), cand AS (
    SELECT w.id, w.partition_key, w.partition_limit, w.rate_limit, w.priority, w.eligible_at
    FROM (
        SELECT c.id, c.partition_key, c.partition_limit, c.rate_limit, c.priority, c.eligible_at
        FROM prio p CROSS JOIN LATERAL (
            SELECT g.id, g.partition_key, g.partition_limit, g.rate_limit, g.priority,
                g.eligible_at
            FROM {{s}}.gen_durable g
            WHERE g.queue = %(queue)s AND g.priority = p.priority AND g.status = 'runnable'
              AND g.eligible_at <= now()
              AND {guard}
            ORDER BY g.eligible_at
            LIMIT %(limit)s
            FOR NO KEY UPDATE OF g SKIP LOCKED
        ) c
        WHERE p.priority IS NOT NULL
        UNION ALL
        SELECT t.id, t.partition_key, t.partition_limit, t.rate_limit, t.priority, t.eligible_at
        FROM (
            SELECT g.id, g.partition_key, g.partition_limit, g.rate_limit, g.priority,
                g.eligible_at
            FROM {{s}}.gen_durable g
            WHERE g.queue = %(queue)s AND g.status = 'runnable' AND g.eligible_at <= now()
              AND g.priority > (SELECT p.priority FROM prio p WHERE p.depth = {PICK_WALK})
              AND {guard}
            ORDER BY g.priority, g.eligible_at
            LIMIT %(limit)s
            FOR NO KEY UPDATE OF g SKIP LOCKED
        ) t
    ) w
    LIMIT %(limit)s
), chosen AS (
    SELECT c.id, c.partition_key, c.partition_limit, c.rate_limit, c.priority, c.eligible_at,
        c.rn
    FROM (
        SELECT id, partition_key, partition_limit, rate_limit, priority, eligible_at,
            row_number() OVER (
                PARTITION BY partition_key ORDER BY priority, eligible_at, id) AS rn
        FROM cand) c
    WHERE c.partition_key IS NULL OR c.rn <= c.partition_limit
)"""


def _claimed(ids: str, slot: str, due: str = "NULL::float8") -> str:
    """The CTE that claims the rows ``ids`` (a query of ids) selects, each taking the
    partition slot ``slot``; ``due`` says when each may start.

    The UPDATE finds them through `id = ANY (ARRAY(...))`, a primary-key lookup
    whatever the planner guesses of the batch size (a join became a hash join over the
    whole table in a generic plan, or a nested loop comparing every pair). Inbox and
    children ride along in RETURNING (§17: no extra round trip)."""
    return f"""claimed AS (
    UPDATE {{s}}.gen_durable g
    SET status = 'executing', {clear_guard("g", "'executing'")}, locked_by = %(token)s,
        partition_slot = {slot},
        lease_expires_at = now() + make_interval(secs => %(ttl)s), updated_at = now()
    WHERE g.id = ANY (ARRAY({ids}))
    RETURNING g.id, g.fsm, g.fsm_version, g.step, g.state::text AS state_text, g.attempt,
        g.awaits, g.priority, g.partition_key,
        (SELECT json_agg({SIGNAL_JSON} ORDER BY s.id)::text
           FROM {{s}}.signals s WHERE s.target_id = g.id) AS inbox_text,
        (SELECT json_agg({CHILD_JSON} ORDER BY c.id)::text
           FROM {{s}}.gen_durable c WHERE c.parent_id = g.id) AS childs_text,
        g.locked_by AS token,
        g.awaits IS NOT NULL AND g.await_deadline IS NOT NULL AS timed_out,
        g.rate_limit, NULL::text AS held, {due} AS due, g.trace_context
)"""


_NOT_A_CLAIM = """'' AS state_text, 0 AS attempt, NULL AS awaits, {row}.priority,
    {row}.partition_key, NULL AS inbox_text, NULL AS childs_text, '' AS token,
    false AS timed_out, {row}.rate_limit"""

# The full pick: rate-limited rows go through the buckets (flow.BUCKETS): `served` is
# what is claimed (a claim whose token is due later says when, in `due`), `held` what
# waits for a token, returned after the claims.
# A claim's `due` comes from one object of id -> token time (epoch seconds) built once
# per pick (an InitPlan) out of the claims taken ahead, read by key (a binary search)
# for rate-limited rows, and counted from clock_timestamp(): from the end of the
# statement rather than its start, so a slow pick does not delay the whole run of
# tokens it took ahead (which would crowd them against the next pick's).
_DUE = """CASE WHEN g.rate_limit IS NOT NULL THEN nullif(greatest(((
        SELECT jsonb_object_agg(r.id::text, r.due) FROM served r WHERE r.due IS NOT NULL)
        ->> g.id::text)::float8 - extract(epoch FROM clock_timestamp()), 0), 0) END"""
_CLAIM_SERVED = _claimed("SELECT id FROM served", SLOT, _DUE)
PICK = Statement(
    "pick",
    "Claim up to `limit` runnable rows of one queue for one claim token",
    f"""{_chosen(_GUARD)}, {BUCKETS}, {_CLAIM_SERVED}
SELECT * FROM claimed
UNION ALL
SELECT h.id, h.fsm, h.fsm_version, h.step, {_NOT_A_CLAIM.format(row="h")}, h.held, h.due,
    NULL AS trace_context
FROM held h
""",
    {"queue": "text", "limit": "int8", "token": "text", "ttl": "float8"},
    Claim,
)

_PLAIN = "rate_limit IS NULL AND partition_limit = 1"

# The pick of a queue without rate-limited rows (SPEC §23: a feature nobody uses
# costs the hot path nothing). It is the full pick without the buckets: the bucket
# CTEs, even empty, doubled the time PostgreSQL spends planning each pick (the pick
# is planned per execution: its custom plans beat the generic one). A rate-limited
# candidate is left as it is (runnable, where it was, like a row skipped for its key)
# and one of them comes back with `held` = 'limited': the scheduler then picks with
# PICK, which debits the buckets, for as long as the queue has such rows.
PICK_PLAIN = Statement(
    "pick_plain",
    "Claim up to `limit` runnable rows of one queue, leaving rate-limited ones to `pick`",
    f"""{_chosen(_PLAIN_GUARD)}, {_claimed(f"SELECT id FROM chosen WHERE {_PLAIN}", "0")}
SELECT * FROM claimed
UNION ALL
(SELECT c.id, '' AS fsm, 0 AS fsm_version, '' AS step, {_NOT_A_CLAIM.format(row="c")},
    'limited' AS held, NULL::float8 AS due, NULL AS trace_context
 FROM chosen c WHERE NOT ({_PLAIN}) LIMIT 1)
""",
    {"queue": "text", "limit": "int8", "token": "text", "ttl": "float8"},
    Claim,
)


@dataclass(frozen=True, slots=True)
class KeyHead:
    """The instance a contended pick wanted for a partition key."""

    id: int
    fsm: str


# Rare and off the hot path: names the instance for `partition.contended` telemetry.
NEXT_FOR_KEY = Statement(
    "next_for_key",
    "The most urgent runnable row of a partition key, for contention telemetry",
    """
SELECT id, fsm FROM {s}.gen_durable
WHERE queue = %(queue)s AND status = 'runnable' AND partition_key = %(key)s
ORDER BY priority, eligible_at LIMIT 1
""",
    {"queue": "text", "key": "text"},
    KeyHead,
)
