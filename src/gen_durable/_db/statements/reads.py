"""What clients read: one instance, its inbox, its children (SPEC §6, §7, §11)."""

from __future__ import annotations

from ...instance import Instance
from ...machine import Child, Signal
from ..statement import Statement

COLUMNS = """g.id, g.fsm, g.fsm_version, g.step, g.status::text AS status, g.state, g.result,
       g.awaits, g.queue, g.priority, g.partition_key, g.eligible_at, g.attempt,
       g.last_error, g.locked_by, g.lease_expires_at, g.parent_id, g.children_pending,
       g.unique_key, g.unique_scope::text[] AS unique_scope, g.unique_guard, g.inserted_at,
       g.updated_at, g.crash_count, g.errors, g.detached, g.await_deadline"""
"""Every column of a row ``g`` as :class:`~gen_durable.instance.Instance` decodes it."""

# bytea arrives as memoryview or bytes depending on the loader a caller's own
# connection registered; arrays as lists.
LOADS = {
    "unique_key": bytes,
    "unique_guard": bytes,
    "unique_scope": tuple,
    "errors": tuple,
    "awaits": tuple,
}

GET = Statement(
    "get",
    "One instance's row, every column, by primary key",
    f"""
SELECT {COLUMNS}
FROM {{s}}.gen_durable g WHERE id = %(id)s
""",
    {"id": "int8"},
    Instance,
    load=LOADS,
)

INBOX = Statement(
    "inbox",
    "An instance's stored signals, oldest first (signals_target)",
    """
SELECT id, name, payload, dedup_key, inserted_at FROM {s}.signals
WHERE target_id = %(id)s ORDER BY id
""",
    {"id": "int8"},
    Signal,
)

CHILDREN = Statement(
    "children",
    "An instance's children, by id (gen_durable_parent)",
    """
SELECT id, fsm, status::text AS status, state, result, last_error FROM {s}.gen_durable
WHERE parent_id = %(id)s ORDER BY id
""",
    {"id": "int8"},
    Child,
)
