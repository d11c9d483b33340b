"""Leases: the heartbeat, the reaper and handing claims back (SPEC §5, §8, §18.7).

Heartbeat and reaper skip rows locked by someone else (an outcome being committed, a
delivery): waiting would stall every other lease behind one row, and a skipped row is
either finishing now or caught next interval.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..batch import INT8, TEXT, Layout
from ..statement import Statement
from .common import ATTACHED_PARENT, JOIN, clear_guard, with_error

CLAIM = Layout("claim", [("id", INT8), ("token", TEXT)])
"""One claimed row: its id and the claim token that holds it."""

# (id, token) pairs of claimed rows.
CLAIMS = f"""(SELECT {CLAIM.unpack()}
     FROM jsonb_array_elements(%(claims)s::jsonb) e)"""


def claims_json(ids: list[int], tokens: list[str]) -> str:
    """The ``claims`` parameter: one JSON array of [id, token]."""
    return CLAIM.columns(ids, tokens)


def still_held(lock: str) -> str:
    """The rows of the ``claims`` parameter their claim still holds, locked in id order
    (so two such statements cannot deadlock each other) with ``lock``."""
    return f"""SELECT g.id FROM {{s}}.gen_durable g
    JOIN {CLAIMS} AS c ON g.id = c.id AND g.locked_by = c.token
    WHERE g.status = 'executing'
    ORDER BY g.id
    {lock}"""


@dataclass(slots=True)  # not frozen: built once per row on the hot path, 4x cheaper
class Touched:
    """A row the statement wrote (or locked)."""

    id: int


HEARTBEAT = Statement(
    "heartbeat",
    "Extend the lease of every (id, token) this node still holds, in one statement",
    f"""
WITH h AS (
    {still_held("FOR NO KEY UPDATE OF g SKIP LOCKED")}
)
UPDATE {{s}}.gen_durable g SET lease_expires_at = now() + make_interval(secs => %(ttl)s)
FROM h WHERE g.id = h.id
RETURNING g.id
""",
    {"claims": "text", "ttl": "float8"},
    Touched,
)

# One lease the heartbeat skipped because another transaction holds the row: this
# waits for that lock, so the extension lands before any reaper (which skips locked
# rows) can take the row once the lock is released. The wait may be long, hence
# clock_timestamp(), not the statement's start time.
HOLD_LEASE = Statement(
    "hold_lease",
    "Extend one lease, waiting behind a lock another transaction holds on the row",
    """
UPDATE {s}.gen_durable
SET lease_expires_at = clock_timestamp() + make_interval(secs => %(ttl)s)
WHERE id = %(id)s AND locked_by = %(token)s AND status = 'executing'
RETURNING id
""",
    {"id": "int8", "token": "text", "ttl": "float8"},
    Touched,
)


@dataclass(slots=True)  # not frozen: built once per row on the hot path, 4x cheaper
class Reaped:
    """An expired lease the reaper took: ``runnable`` again, or ``failed`` at the
    crash limit."""

    id: int
    status: str


_EXPIRED_ENTRY = with_error(
    "jsonb_build_object('step', g.step, 'attempt', g.attempt, 'type', "
    "'LeaseExpired', 'message', format('the lease of %%s expired before the step "
    "committed an outcome (%%s of crash_limit %%s)', g.locked_by, "
    "g.crash_count + 1, %(crash_limit)s::int), 'traceback', NULL)"
)

# Reads only gen_durable_lease below now(): cost follows the expired set. Bounded per
# call; the caller loops while a full batch comes back. No ORDER BY: any expired row
# will do, and without one the scan can stop at the limit instead of collecting and
# sorting a large backlog on every batch.
# Each expiry counts in `crash_count` and is written to the error history. A row whose
# count reaches `crash_limit` is failed instead of returned: its step kills or freezes
# every worker that runs it, and re-running it forever would take node after node
# down (SPEC §5). `attempt` stays the one that crashed, as for a Stop, and a failed
# child releases its parent's barrier like any terminal child (§7): the join CTEs are
# the outcomes' own.
_REAPED = """(CASE WHEN x.poisoned THEN 'failed'
                       ELSE 'runnable' END)::{s}.durable_status"""

REAP = Statement(
    "reap",
    "Return up to `limit` expired leases to runnable, or fail them at the crash limit",
    f"""
WITH x AS (
    SELECT id, crash_count + 1 >= %(crash_limit)s AS poisoned FROM {{s}}.gen_durable
    WHERE status = 'executing' AND lease_expires_at < now()
    LIMIT %(limit)s
    FOR NO KEY UPDATE SKIP LOCKED
), u AS (
    UPDATE {{s}}.gen_durable g SET
        status = {_REAPED},
        {clear_guard("g", _REAPED)},
        attempt = CASE WHEN x.poisoned THEN g.attempt ELSE g.attempt + 1 END,
        crash_count = g.crash_count + 1,
        last_error = CASE WHEN x.poisoned THEN format(
                'lease expired %%s times on step ''%%s'': the worker died or froze while '
                'running it', g.crash_count + 1, g.step) ELSE g.last_error END,
        errors = {_EXPIRED_ENTRY},
        eligible_at = CASE WHEN x.poisoned THEN g.eligible_at ELSE now() END,
        locked_by = NULL, lease_expires_at = NULL, updated_at = now()
    FROM x WHERE g.id = x.id
    RETURNING g.id, {ATTACHED_PARENT}, g.status
), {JOIN}
SELECT u.id, u.status::text AS status FROM u WHERE (SELECT count(*) FROM nudge) >= 0
""",
    {"crash_limit": "int4", "limit": "int8", "channel": "text"},
    Reaped,
)

# Hand claimed rows back: drain, unknown machine (§13), stragglers. Attempt unchanged
# unless `bump` (the step was interrupted). Locks in id order so two releases cannot
# deadlock each other, and SKIP LOCKED so a client holding one of the rows in an open
# transaction cannot hold a stop or a queue's feeder hostage: a skipped row keeps its
# lease and falls to the reaper. `reason` (unknown machine) is left in last_error for
# `show` and `status`.
RELEASE = Statement(
    "release",
    "Hand claimed rows back to runnable (drain, unknown machine, stragglers)",
    f"""
WITH r AS (
    {still_held("FOR NO KEY UPDATE OF g SKIP LOCKED")}
)
UPDATE {{s}}.gen_durable g
SET status = 'runnable', {clear_guard("g", "'runnable'")},
    locked_by = NULL, lease_expires_at = NULL, updated_at = now(),
    attempt = g.attempt + %(bump)s,
    eligible_at = CASE WHEN %(delay)s > 0 THEN now() + make_interval(secs => %(delay)s)
                       ELSE g.eligible_at END,
    last_error = coalesce(%(reason)s::text, g.last_error)
FROM r WHERE g.id = r.id
RETURNING g.id
""",
    {"claims": "text", "bump": "int4", "delay": "float8", "reason": "text"},
    Touched,
)
