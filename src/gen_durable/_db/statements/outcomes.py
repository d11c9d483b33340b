"""Outcomes: the guarded writes that commit a step (SPEC §4, §6, §7, §18.1, §18.2)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..batch import (
    BOOL,
    FLOAT8,
    INT8,
    INT8_ARRAY,
    JSON,
    JSON_OR_SQL_NULL,
    NAMES,
    OPT_FLOAT8,
    OPT_TEXT,
    TEXT,
    TIMESTAMPTZ,
    TRAILING_JSON,
    Layout,
    array,
)
from ..statement import Statement
from .common import ATTACHED_PARENT, JOIN, SIGNAL_JSON, clear_guard, with_error
from .inserts import BODY, KEY_ORDER, ON_CONFLICT, RETURNING, SOURCE
from .leases import Touched, still_held

OUTCOME = Layout(
    "outcome",
    [
        ("id", INT8),
        ("token", TEXT),
        ("kind", TEXT),
        ("step", OPT_TEXT),
        ("state", JSON_OR_SQL_NULL),
        ("result", JSON),
        ("error", OPT_TEXT),
        ("delay", FLOAT8),
        ("awaits", NAMES),
        ("consume", NAMES),
        ("seen", INT8_ARRAY),
        ("keep", BOOL),
        ("timeout", OPT_FLOAT8),
        ("deadline", TIMESTAMPTZ),
        ("rate_limit", OPT_TEXT),
        ("error_entry", TRAILING_JSON),
    ],
)
"""One Next/Replay/Await/Done/Stop outcome, as ``complete`` unpacks it. The encoders
read these names as attributes (``OUTCOME.row(completion)``) or keywords."""


@dataclass(slots=True)
class CompleteBatch:
    """Outcomes for ``complete``, each encoded at once as the JSON array the statement
    unpacks (no intermediate column lists: this runs once per step)."""

    rows: list[str]

    @classmethod
    def empty(cls) -> CompleteBatch:
        return cls([])

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, **fields: Any) -> None:
        """One outcome by :data:`OUTCOME` field names (``id``, ``token``, ``kind``
        required; the others default to nothing)."""
        self.rows.append(OUTCOME.element(**fields))

    def params(self) -> dict[str, Any]:
        return {"batch": array(self.rows)}


# Locks the rows about to park, in id order, in a statement of its own. The
# `complete` statement that follows in the same transaction then takes a new READ
# COMMITTED snapshot, which includes every signal whose delivery held the row lock
# before us (§18.1): a check in the same statement as the wait for the lock would use
# the older snapshot and miss it.
LOCK_CLAIMED = Statement(
    "lock_claimed",
    "Lock claimed rows in id order before a park re-checks the inbox",
    still_held("FOR NO KEY UPDATE OF g"),
    {"claims": "text"},
    Touched,
)


@dataclass(slots=True)  # not frozen: built once per row on the hot path, 4x cheaper
class Completed:
    """An outcome ``complete`` applied: the row's new status, and for a row kept for
    run-ahead its inbox (JSON text of :data:`~.common.SIGNAL_ITEM` arrays)."""

    id: int
    status: str
    inbox: str | None
    token: str


# Next, Replay, Await, Done and Stop for any number of rows in one statement. A Next
# with `keep` (run-ahead) stays `executing` under the same claim instead of going back
# through the queue, and the statement returns the row's inbox (minus what this
# outcome consumed — deletes are not visible inside the statement's snapshot), as a
# pick would. Children need no reload: a parent runs only once all its children are
# terminal, so they cannot change under a chain of Next steps. A kept row's indexed
# columns (status, eligible_at, the lease — the heartbeat extends it) are left as they
# are, so the update can be HOT: no index entries are written for a run-ahead step.
# A delayed Next (a durable sleep) is never kept: `o.delay` puts it back in the queue
# at now() + delay, as for a Replay; a Next without one costs a float comparison.
# `u` is the guarded compare-and-set; `consumed` deletes the inbox rows the step saw
# under the name it was woken by (§6); `joined` … `decrement` is the join of §7
# (`JOIN`, shared with the reaper).
_STATUS = """(CASE o.kind
            WHEN 'next' THEN CASE WHEN o.keep THEN 'executing' ELSE 'runnable' END
            WHEN 'replay' THEN 'runnable'
            WHEN 'done' THEN 'done'
            WHEN 'stop' THEN 'failed'
            ELSE CASE WHEN {unseen} THEN 'runnable'
                      WHEN {deadline} <= now() THEN 'runnable'
                      ELSE 'awaiting_signal' END
            END)::{s}.durable_status"""
"""The new status of an outcome's row; written twice in the SET (the status, and
whether it leaves the key's scope), evaluated twice only for a row holding a key."""

# An Await parks unless a signal of its set that the step did not see is already in
# the inbox (§18.1, §18.5, for every name of the set), or its deadline has already
# passed (a `deadline=` carried across waits): then it commits `runnable` at once.
_UNSEEN = """EXISTS (
                    SELECT 1 FROM {s}.signals s
                    WHERE s.target_id = g.id AND s.name = ANY (o.awaits)
                      AND s.id <> ALL (o.seen))"""
# The wait's end (§19): a timeout counts from this commit, a deadline is absolute.
_DEADLINE = "coalesce(now() + make_interval(secs => o.timeout), o.deadline)"
_STATUS = _STATUS.replace("{unseen}", _UNSEEN).replace("{deadline}", _DEADLINE)
# A wait committed `runnable` for an unseen signal was woken by it, not by time: it
# keeps no deadline, so the step reads `timed_out` False (the timer only ever flips
# parked rows, and leaves the deadline in place when it does).
_AWAIT_DEADLINE = f"""CASE WHEN o.kind <> 'await' THEN NULL
                      WHEN {_UNSEEN} THEN NULL
                      ELSE {_DEADLINE} END"""

COMPLETE = Statement(
    "complete",
    "Apply Next/Replay/Await/Done/Stop outcomes of any number of rows, claim-guarded",
    f"""
WITH o AS (
    SELECT {OUTCOME.unpack()}
    FROM jsonb_array_elements(%(batch)s::jsonb) e
), u AS (
    UPDATE {{s}}.gen_durable g SET
        status = {_STATUS},
        {clear_guard("g", _STATUS)},
        step = coalesce(o.step, g.step),
        state = coalesce(o.state, g.state),
        result = CASE WHEN o.kind = 'done' THEN o.result ELSE g.result END,
        last_error = CASE WHEN o.kind = 'stop' THEN o.error ELSE g.last_error END,
        errors = CASE WHEN o.error_entry IS NULL THEN g.errors
                      ELSE {with_error("o.error_entry")} END,
        attempt = CASE o.kind WHEN 'replay' THEN g.attempt + 1
                              WHEN 'done' THEN g.attempt
                              WHEN 'stop' THEN g.attempt
                              ELSE 0 END,
        eligible_at = CASE WHEN o.keep THEN g.eligible_at
                           WHEN o.kind = 'replay' OR o.delay > 0
                                THEN now() + make_interval(secs => o.delay)
                           WHEN o.kind IN ('done', 'stop') THEN g.eligible_at
                           ELSE now() END,
        awaits = CASE WHEN o.kind = 'await' THEN o.awaits END,
        await_deadline = {_AWAIT_DEADLINE},
        locked_by = CASE WHEN o.keep THEN g.locked_by END,
        lease_expires_at = CASE WHEN o.keep THEN g.lease_expires_at END,
        crash_count = 0,
        rate_limit = CASE WHEN o.rate_limit IS NULL THEN g.rate_limit
                          ELSE nullif(o.rate_limit, '') END,
        updated_at = now()
    FROM o
    WHERE g.id = o.id AND g.locked_by = o.token AND g.status = 'executing'
    RETURNING g.id, {ATTACHED_PARENT}, g.status, o.token
), consumed AS (
    DELETE FROM {{s}}.signals s
    USING u JOIN o ON o.id = u.id AND o.token = u.token
    WHERE o.kind <> 'await' AND s.target_id = u.id AND s.name = ANY (o.consume)
      AND s.id = ANY (o.seen)
), {JOIN}
SELECT u.id, u.status::text AS status,
    CASE WHEN u.status = 'executing' THEN (
        SELECT json_agg({SIGNAL_JSON} ORDER BY s.id)::text
        FROM {{s}}.signals s JOIN o ON o.id = u.id AND o.token = u.token
        WHERE s.target_id = u.id
          AND NOT coalesce(s.name = ANY (o.consume) AND s.id = ANY (o.seen), false))
    END AS inbox, u.token
FROM u WHERE (SELECT count(*) FROM nudge) >= 0
""",
    {"batch": "text", "channel": "text"},
    Completed,
)


@dataclass(slots=True)  # not frozen: built once per row on the hot path, 4x cheaper
class Scheduled:
    """A parent ``schedule_childs`` parked (or sent on, with no child inserted)."""

    id: int
    status: str
    children: list[int] | None
    nudged: int
    token: str

    @property
    def inbox(self) -> None:
        """A parked (or released) parent keeps no claim, so it has no run-ahead inbox."""
        return None


# ScheduleChilds (§7): children insert, inbox consume and the parent's park, as one
# statement behind the parent's claim guard (`p`): a stale parent inserts no children.
# The parent goes straight to runnable when none were inserted.
_PARKED = "(CASE WHEN n.n = 0 THEN 'runnable' ELSE 'awaiting_children' END)::{s}.durable_status"

SCHEDULE_CHILDS = Statement(
    "schedule_childs",
    "Insert a parent's children and park it on their barrier, as one atomic unit",
    f"""
WITH p AS (
    SELECT g.id, g.locked_by AS token FROM {{s}}.gen_durable g
    WHERE g.id = %(id)s AND g.locked_by = %(token)s AND g.status = 'executing'
    FOR NO KEY UPDATE
), ins AS ({BODY}{SOURCE} JOIN p ON true
{KEY_ORDER}
{ON_CONFLICT}
{RETURNING}
), n AS (
    SELECT count(*)::int AS n FROM ins
), consumed AS (
    DELETE FROM {{s}}.signals s USING p
    WHERE s.target_id = p.id AND s.name = ANY (%(consume)s::text[])
      AND s.id = ANY (%(seen)s::int8[])
), u AS (
    UPDATE {{s}}.gen_durable g SET
        status = {_PARKED},
        {clear_guard("g", _PARKED)},
        children_pending = n.n, step = %(next_step)s,
        state = coalesce(%(new_state)s::jsonb, g.state), attempt = 0, eligible_at = now(),
        errors = CASE WHEN %(entry)s::jsonb IS NULL THEN g.errors
                      ELSE {with_error("%(entry)s::jsonb")} END,
        awaits = NULL, await_deadline = NULL, locked_by = NULL, lease_expires_at = NULL,
        crash_count = 0,
        updated_at = now()
    FROM p, n WHERE g.id = p.id
    RETURNING g.id, g.status, p.token
), nudge AS (
    SELECT pg_notify(%(channel)s, q.queue) FROM (SELECT DISTINCT queue FROM ins) q
)
SELECT u.id, u.status::text AS status,
       (SELECT array_agg(id ORDER BY id) FROM ins) AS children,
       (SELECT count(*) FROM nudge) AS nudged, u.token
FROM u
""",
    {
        "batch": "text",
        "id": "int8",
        "token": "text",
        "consume": "text[]",
        "seen": "int8[]",
        "next_step": "text",
        "new_state": "text",
        "entry": "text",
        "channel": "text",
    },
    Scheduled,
)
