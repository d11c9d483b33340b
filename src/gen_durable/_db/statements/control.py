"""Operator control: cancel with cascade, retry (SPEC §21, §27.2, §27.3).

None of these runs on the hot path. Lock order matters, because a child's terminal
commit locks the child, then its parent (the join of §7):

* ``cancel`` locks the roots, then (one statement per level of the tree, each with a
  fresh READ COMMITTED snapshot) their children. The per-level statement is what
  leaves no window for an escaping child: a parent's ``schedule_childs`` that
  committed before our lock is visible to the next level's snapshot, and one that
  comes after finds its claim gone and inserts nothing (§27.2). Locking parent before
  child can deadlock with a child's concurrent terminal commit; PostgreSQL breaks the
  tie and the loser retries (the completer treats it as transient, ``cancel`` runs
  its transaction again).
* ``retry`` locks the row, then its parent, in the join's own order.

A cancelled row tells the node running its step through a notification on the
schema's channel whose payload is :data:`CANCEL_PREFIX` + the id; the listener hands
it to the node, which cancels the step's task. Polling stays the truth: without
LISTEN the next heartbeat finds the claim gone.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..statement import Statement
from .common import ATTACHED_PARENT, JOIN, clear_guard

CANCEL_PREFIX = "!cancel "
"""Notification payload prefix of a cancelled running step (a queue name never
starts with it in practice; a node that sees it never treats it as a queue)."""

_LIVE = "('runnable', 'executing', 'awaiting_signal', 'awaiting_children')"
_CANCELLED = "'cancelled'::{s}.durable_status"


@dataclass(frozen=True, slots=True)
class Cancelled:
    """One row ``cancel`` locked: its status before, and whether it was cancelled now."""

    id: int
    was: str
    cancelled: bool


def _cancel_rows() -> str:
    """Cancel the live rows of the locking CTE ``c`` (id, status): the SET of §21, the
    join for their parents (a parent not being cancelled may wake), and a stop
    notification for each step that was running."""
    return f"""u AS (
    UPDATE {{s}}.gen_durable g SET
        status = {_CANCELLED},
        {clear_guard("g", _CANCELLED)},
        last_error = %(reason)s,
        awaits = NULL, await_deadline = NULL, locked_by = NULL, lease_expires_at = NULL,
        crash_count = 0,
        updated_at = now()
    FROM c WHERE g.id = c.id AND c.status IN {_LIVE}
    RETURNING g.id, {ATTACHED_PARENT}, g.status
), {JOIN}, stop AS (
    SELECT pg_notify(%(channel)s, '{CANCEL_PREFIX}' || c.id)
    FROM c JOIN u ON u.id = c.id WHERE c.status = 'executing'
)
SELECT c.id, c.status::text AS was, u.id IS NOT NULL AS cancelled
FROM c LEFT JOIN u ON u.id = c.id
WHERE (SELECT count(*) FROM nudge) >= 0 AND (SELECT count(*) FROM stop) >= 0
ORDER BY c.id
"""


def _cancel(name: str, why: str, column: str) -> Statement[Cancelled]:
    """Lock the rows whose ``column`` is in ``ids``, in id order, and cancel the live ones."""
    return Statement(
        name,
        why,
        f"""
WITH c AS (
    SELECT id, status FROM {{s}}.gen_durable WHERE {column} = ANY (%(ids)s::int8[])
    ORDER BY id
    FOR NO KEY UPDATE
), {_cancel_rows()}""",
        {"ids": "int8[]", "reason": "text", "channel": "text"},
        Cancelled,
    )


CANCEL = _cancel(
    "control.cancel",
    "Cancel live instances by id (the roots of a cancel), releasing their parents' slots",
    "id",
)
CANCEL_CHILDREN = _cancel(
    "control.cancel_children",
    "Lock every child of the given rows and cancel the live ones (one level of a cascade)",
    "parent_id",
)


@dataclass(frozen=True, slots=True)
class RetryTarget:
    """The row ``retry`` locked, and what deciding on it needs."""

    id: int
    fsm: str
    fsm_version: int
    step: str
    status: str
    parent_id: int | None
    detached: bool


LOCK_FOR_RETRY = Statement(
    "control.lock_for_retry",
    "Lock one row a retry may restart (before its parent: the join's lock order)",
    """
SELECT id, fsm, fsm_version, step, status::text AS status, parent_id, detached
FROM {s}.gen_durable WHERE id = %(id)s
FOR NO KEY UPDATE
""",
    {"id": "int8"},
    RetryTarget,
)


@dataclass(frozen=True, slots=True)
class ParentStatus:
    id: int
    status: str


LOCK_PARENT = Statement(
    "control.lock_parent",
    "Lock a retried child's parent and read whether its barrier still waits",
    """
SELECT id, status::text AS status FROM {s}.gen_durable WHERE id = %(id)s
FOR NO KEY UPDATE
""",
    {"id": "int8"},
    ParentStatus,
)


@dataclass(frozen=True, slots=True)
class Retried:
    id: int
    status: str
    detached: bool


# `attach`: the parent's barrier still waits, so it counts this child once more (its
# earlier end already released the slot). Otherwise a child with a parent runs
# detached: its end must not touch a barrier that has moved on (§27.3). A row whose
# own children are still pending (cancelled without cascade) goes back to waiting for
# them rather than running beside them.
RETRY = Statement(
    "control.retry",
    "Make a failed or cancelled row runnable again at its (or a given) step, attempt 0",
    """
WITH par AS (
    UPDATE {s}.gen_durable p SET
        children_pending = p.children_pending + 1, updated_at = now()
    WHERE %(attach)s AND p.id = %(parent)s AND p.status = 'awaiting_children'
    RETURNING p.id
), u AS (
    UPDATE {s}.gen_durable g SET
        status = (CASE WHEN g.children_pending > 0 THEN 'awaiting_children'
                       ELSE 'runnable' END)::{s}.durable_status,
        step = coalesce(%(step)s, g.step),
        state = coalesce(%(state)s::jsonb, g.state),
        attempt = 0, crash_count = 0, awaits = NULL, await_deadline = NULL, eligible_at = now(),
        detached = g.detached OR (g.parent_id IS NOT NULL AND NOT %(attach)s),
        updated_at = now()
    WHERE g.id = %(id)s AND g.status IN ('failed', 'cancelled')
      AND (SELECT count(*) FROM par) >= 0
    RETURNING g.id, g.status, g.detached, g.queue
), nudge AS (
    SELECT pg_notify(%(channel)s, u.queue) FROM u WHERE u.status = 'runnable'
)
SELECT u.id, u.status::text AS status, u.detached FROM u
WHERE (SELECT count(*) FROM nudge) >= 0
""",
    {
        "id": "int8",
        "parent": "int8",
        "attach": "bool",
        "step": "text",
        "state": "text",
        "channel": "text",
    },
    Retried,
)
