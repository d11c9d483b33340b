"""What clients read: one instance, its inbox, its children (SPEC §6, §7, §11)."""

from __future__ import annotations

from ...instance import Instance
from ...machine import Child, Signal
from ..statement import Statement

GET = Statement(
    "get",
    "One instance's row, every column, by primary key",
    """
SELECT id, fsm, fsm_version, step, status::text AS status, state, result, awaits, queue,
       priority, partition_key, eligible_at, attempt, last_error, locked_by,
       lease_expires_at, parent_id, children_pending, unique_key,
       unique_scope::text[] AS unique_scope, unique_guard, inserted_at, updated_at,
       crash_count, errors, await_deadline
FROM {s}.gen_durable WHERE id = %(id)s
""",
    {"id": "int8"},
    Instance,
    # bytea arrives as memoryview or bytes depending on the loader a caller's own
    # connection registered; arrays as lists.
    load={
        "unique_key": bytes,
        "unique_guard": bytes,
        "unique_scope": tuple,
        "errors": tuple,
        "awaits": tuple,
    },
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
