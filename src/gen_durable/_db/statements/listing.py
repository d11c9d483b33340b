"""Operator reads and bulk batches over the filters of SPEC §21, and retention (§22).

Every filter is an optional parameter (NULL: any). These statements run with
``plan_cache_mode = force_custom_plan`` (:data:`CUSTOM_PLANS`), so each call is planned
for the filters it actually has: a NULL filter folds away and the planner picks the
index the remaining ones allow (``docs/explain.md`` says which filters are served by
an index and which scan). A status filter is written so that it
folds to plain ``status = '...'`` conditions under a custom plan (:func:`_status_in`):
that is what lets it use the partial indexes, whose predicates are only proven from
constants.

Paging is by id, newest first: ``before`` is the last id of the previous page, so a
page costs the same however deep it is (keyset, no OFFSET).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...instance import Instance
from ..statement import Statement
from .common import STATUSES, TERMINAL
from .reads import COLUMNS, LOADS


def _status_in(param: str) -> str:
    """``g.status`` is one of the statuses in ``param`` (``",done,failed,"``, see
    :func:`status_array`). Written as one arm per status with the status as a literal:
    under a custom plan the ``strpos`` tests fold to constants, leaving plain
    ``status = 'done'`` conditions that prove a partial index's predicate. (A cast of
    the parameter to the enum array would not fold: the enum's input function is only
    STABLE.)"""
    arms = " OR ".join(
        f"(strpos(%({param})s::text, ',{st},') > 0 AND g.status = '{st}')" for st in STATUSES
    )
    return f"({arms})"


_FILTER = f"""(%(fsm)s::text IS NULL OR g.fsm = %(fsm)s::text)
  AND (%(statuses)s::text IS NULL OR {_status_in("statuses")})
  AND (%(queue)s::text IS NULL OR g.queue = %(queue)s::text)
  AND (%(step)s::text IS NULL OR g.step = %(step)s::text)
  AND (%(partition_key)s::text IS NULL OR g.partition_key = %(partition_key)s::text)
  AND (%(unique_key)s::bytea IS NULL OR g.unique_key = %(unique_key)s::bytea)
  AND (%(parent)s::int8 IS NULL OR g.parent_id = %(parent)s::int8)
  AND (%(inserted_after)s::timestamptz IS NULL OR g.inserted_at > %(inserted_after)s)
  AND (%(inserted_before)s::timestamptz IS NULL OR g.inserted_at < %(inserted_before)s)
  AND (%(updated_after)s::timestamptz IS NULL OR g.updated_at > %(updated_after)s)
  AND (%(updated_before)s::timestamptz IS NULL OR g.updated_at < %(updated_before)s)
  AND (%(error)s::text IS NULL OR strpos(g.last_error, %(error)s::text) > 0)
  AND (%(before)s::int8 IS NULL OR g.id < %(before)s::int8)"""

FILTER_PARAMS = {
    "fsm": "text",
    "statuses": "text",
    "queue": "text",
    "step": "text",
    "partition_key": "text",
    "unique_key": "bytea",
    "parent": "int8",
    "inserted_after": "timestamptz",
    "inserted_before": "timestamptz",
    "updated_after": "timestamptz",
    "updated_before": "timestamptz",
    "error": "text",
    "before": "int8",
}
"""The parameters every filtered statement takes (:meth:`gen_durable.filters.Filter.params`
plus the page cursor)."""

CUSTOM_PLANS: Statement[None] = Statement(
    "listing.custom_plans",
    "Plan the filtered statements of this transaction for their actual filters",
    "SET LOCAL plan_cache_mode = force_custom_plan",
)


def status_array(statuses: list[str] | tuple[str, ...] | None) -> str | None:
    """Checked statuses as the parameter :func:`_status_in` reads."""
    return None if statuses is None else "," + ",".join(statuses) + ","


LIST = Statement(
    "listing.list",
    "One page of instances matching the filters, newest first (keyset on id)",
    f"""
SELECT {COLUMNS}
FROM {{s}}.gen_durable g
WHERE {_FILTER}
ORDER BY g.id DESC
LIMIT %(limit)s
""",
    {**FILTER_PARAMS, "limit": "int8"},
    Instance,
    load=LOADS,
)


@dataclass(frozen=True, slots=True)
class Matched:
    id: int


# `only` narrows to the statuses a bulk action can change (live rows for a cancel,
# failed and cancelled for a retry, terminal for a purge). No lock: the action that
# follows locks and re-checks each row itself, so a row that changed in between is
# simply left alone.
MATCHING = Statement(
    "listing.matching",
    "The next batch of ids a bulk action may change, newest first (keyset on id)",
    f"""
SELECT g.id FROM {{s}}.gen_durable g
WHERE {_FILTER}
  AND {_status_in("only")}
ORDER BY g.id DESC
LIMIT %(limit)s
""",
    {**FILTER_PARAMS, "only": "text", "limit": "int8"},
    Matched,
)


@dataclass(frozen=True, slots=True)
class Counted:
    count: int


# What a bulk action would touch, for the CLI's dry run. A count reads every matching
# row: fine for an operator's command, not for a loop.
COUNT_MATCHING = Statement(
    "listing.count_matching",
    "How many rows a bulk action would change (the CLI's dry run)",
    f"""
SELECT count(*) AS count FROM {{s}}.gen_durable g
WHERE {_FILTER}
  AND {_status_in("only")}
""",
    {**FILTER_PARAMS, "only": "text"},
    Counted,
)

_LIVE_PARENT = f"""EXISTS (
        SELECT 1 FROM {{s}}.gen_durable p
        WHERE p.id = g.parent_id AND p.status NOT IN {TERMINAL!r})"""
"""The row ``g`` is a child whose parent is still live: kept, the parent may still
read ``ctx.childs`` (SPEC §22, §27.6)."""


@dataclass(frozen=True, slots=True)
class Purged:
    id: int


# Deleting a row deletes its inbox (ON DELETE CASCADE) and sets its children's
# parent_id to NULL. SKIP LOCKED: a row another transaction holds is left for later.
# The DELETE takes the locked ids as an array: primary-key probes, where a join with
# the CTE may be planned as a hash join over the whole table.
PURGE = Statement(
    "listing.purge",
    "Delete the given terminal rows (and their inboxes), sparing children of live parents",
    f"""
WITH x AS (
    SELECT g.id FROM {{s}}.gen_durable g
    WHERE g.id = ANY (%(ids)s::int8[]) AND g.status IN {TERMINAL!r}
      AND NOT {_LIVE_PARENT}
    FOR UPDATE SKIP LOCKED
)
DELETE FROM {{s}}.gen_durable g WHERE g.id = ANY (ARRAY(SELECT id FROM x))
RETURNING g.id
""",
    {"ids": "int8[]"},
    Purged,
)


def _sweep(status: str) -> Statement[Purged]:
    # The status is written into the text (not a parameter) so the planner proves
    # gen_durable_terminal's predicate from it and walks that index from the oldest
    # row of the status: a batch reads O(batch) rows, whatever the table holds.
    return Statement(
        f"gc.sweep.{status}",
        f"Delete a bounded batch of {status} rows past their retention, oldest first",
        f"""
WITH x AS (
    SELECT g.id FROM {{s}}.gen_durable g
    WHERE g.status = '{status}'
      AND g.updated_at < now() - make_interval(secs => %(age)s)
      AND NOT {_LIVE_PARENT}
    ORDER BY g.updated_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM {{s}}.gen_durable g WHERE g.id = ANY (ARRAY(SELECT id FROM x))
RETURNING g.id
""",
        {"age": "float8", "limit": "int8"},
        Purged,
    )


SWEEP_DONE = _sweep("done")
SWEEP_FAILED = _sweep("failed")
SWEEP_CANCELLED = _sweep("cancelled")
SWEEP = {"done": SWEEP_DONE, "failed": SWEEP_FAILED, "cancelled": SWEEP_CANCELLED}
"""The retention sweep of each terminal status (SPEC §22)."""
