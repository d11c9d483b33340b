"""Fragments several statements share: statuses, the error history, the join of §7,
and the JSON items a row's inbox and children travel as.

Shapes that matter, once:

* Every write to a claimed row is a compare-and-set on the *claim token*
  (``locked_by``, which carries a per-pick sequence number, so a node re-claiming the
  same row after the reaper still holds a different token) plus
  ``status = 'executing'`` (§18.2). A guard miss matches no row, and every side effect
  (inbox delete, children insert, parent decrement) hangs off the rows the guarded
  UPDATE returned, so a miss changes nothing at all.
* Claims lock with ``FOR NO KEY UPDATE`` so they neither wait on nor block the
  ``KEY SHARE`` lock a signal insert takes on its target (§18.8).
* JSON arrives as text and is cast to ``jsonb`` in SQL (§18.3).
* LISTEN/NOTIFY is only a nudge for idle schedulers (polling is the truth): one
  notification per queue touched, never one per row.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ...machine import Child, Signal

TERMINAL = ("done", "failed", "cancelled")
NON_TERMINAL = ("runnable", "executing", "awaiting_signal", "awaiting_children")
STATUSES = (*NON_TERMINAL, *TERMINAL)

ERROR_HISTORY = 5
"""Entries kept in a row's ``errors`` array, oldest first (SPEC §5)."""


def with_error(entry: str) -> str:
    """``g.errors`` with one more entry (a jsonb object expression) stamped with the
    database's clock, trimmed to the last :data:`ERROR_HISTORY` — evaluated only for
    rows that have an entry, so an outcome without one pays nothing for the history."""
    return (
        f"jsonb_path_query_array(g.errors || ({entry} || jsonb_build_object('at', now())), "
        f"'$[last - {ERROR_HISTORY - 1} to last]')"
    )


def clear_guard(alias: str, status: str) -> str:
    """The SET item that frees a row's unique key for good when its new ``status`` (an
    SQL expression of the enum) is outside its scope (SPEC §10, revised in v2). It only
    ever keeps or clears ``unique_guard``, never sets it: a row takes its key at insert
    alone. A row without a guard (no key, or freed already: the common case) stops at
    the first test, and a row that stays in its scope keeps the guard unchanged, so an
    update that was HOT stays HOT. (A guard is only ever set when the scope holds
    ``runnable``, so a move into ``runnable`` never clears one; the test is written
    out anyway so the invariant does not rest on that.)"""
    return (
        f"unique_guard = CASE WHEN {alias}.unique_guard IS NOT NULL "
        f"AND NOT (({status}) = ANY ({alias}.unique_scope)) THEN NULL "
        f"ELSE {alias}.unique_guard END"
    )


def _json_item(alias: str, names: Sequence[str]) -> str:
    return "json_build_array(" + ", ".join(f"{alias}.{n}" for n in names) + ")"


SIGNAL_ITEM = ("id", "name", "payload")
"""The fields of an inbox entry as the pick and run-ahead return it: the first fields
of :class:`~gen_durable.machine.Signal`, which decodes it positionally."""
CHILD_ITEM = tuple(f.name for f in dataclasses.fields(Child))
"""The fields of a child as the pick returns it: every field of ``Child``."""
if tuple(f.name for f in dataclasses.fields(Signal))[: len(SIGNAL_ITEM)] != SIGNAL_ITEM:
    raise TypeError(f"Signal must start with the fields {SIGNAL_ITEM}")

SIGNAL_JSON = _json_item("s", SIGNAL_ITEM)
"""One inbox row ``s`` as the JSON array :data:`SIGNAL_ITEM`."""
CHILD_JSON = _json_item("c", CHILD_ITEM)
"""One child row ``c`` as the JSON array :data:`CHILD_ITEM`."""


ATTACHED_PARENT = "CASE WHEN g.detached THEN NULL ELSE g.parent_id END AS parent_id"
"""The parent whose barrier a row ``g`` counts in, for ``u``'s RETURNING: none for a
child that ``retry`` detached after its parent moved on (SPEC §21, §27.3)."""

# The join of §7 for the rows `u` just wrote (id, parent_id, status): every one that
# became terminal decrements its parent's `children_pending`, taking the parent locks
# in id order so sibling batches on two nodes cannot deadlock; concurrent decrements
# serialize on the parent row and the one that reaches zero while the parent waits
# flips it to runnable (and nudges its queue).
_FLIP = "p.status = 'awaiting_children' AND p.children_pending - j.n <= 0"

JOIN = f"""joined AS (
    SELECT parent_id, count(*)::int AS n FROM u
    WHERE status IN ('done', 'failed', 'cancelled') AND parent_id IS NOT NULL
    GROUP BY parent_id
), parents AS (
    SELECT p.id, j.n FROM {{s}}.gen_durable p JOIN joined j ON p.id = j.parent_id
    ORDER BY p.id
    FOR NO KEY UPDATE OF p
), decrement AS (
    UPDATE {{s}}.gen_durable p SET
        children_pending = greatest(p.children_pending - j.n, 0),
        status = CASE WHEN {_FLIP} THEN 'runnable' ELSE p.status END,
        eligible_at = CASE WHEN {_FLIP} THEN now() ELSE p.eligible_at END,
        {clear_guard("p", f"CASE WHEN {_FLIP} THEN 'runnable' ELSE p.status END")},
        updated_at = now()
    FROM parents j WHERE p.id = j.id
    RETURNING p.queue, p.status
), nudge AS (
    SELECT pg_notify(%(channel)s, d.queue)
    FROM (SELECT DISTINCT queue FROM decrement WHERE status = 'runnable') d
)"""
