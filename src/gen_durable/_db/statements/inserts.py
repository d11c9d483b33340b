"""New instances: ``insert``/``insert_all`` and the children of ``ScheduleChilds``
(SPEC §7, §10, §11, §18.6, §18.7)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import Any

from ..batch import (
    HEX_BYTES,
    INT2,
    INT4,
    JSON_OR_EMPTY,
    OPT_FLOAT8,
    OPT_INT8,
    OPT_TEXT,
    TEXT,
    TIMESTAMPTZ,
    Layout,
)
from ..statement import CopyIn, Statement

NEW_ROW = Layout(
    "new_row",
    [
        ("fsm", TEXT),
        ("fsm_version", INT4),
        ("step", TEXT),
        ("state", JSON_OR_EMPTY),
        ("queue", TEXT),
        ("priority", INT2),
        ("partition_key", OPT_TEXT),
        ("partition_limit", INT2),
        ("rate_limit", OPT_TEXT),
        ("eligible_at", TIMESTAMPTZ),
        ("delay", OPT_FLOAT8),
        ("unique_key", HEX_BYTES),
        ("unique_scope", OPT_TEXT),
        ("parent_id", OPT_INT8),
    ],
)
"""One new instance, as the insert statements unpack it."""


@dataclass(slots=True)
class InsertRows:
    """Column arrays for a batch insert (already validated and encoded); the fields
    are :data:`NEW_ROW`'s, in its order."""

    fsm: list[str]
    fsm_version: list[int]
    step: list[str]
    state: list[str | None]
    queue: list[str]
    priority: list[int]
    partition_key: list[str | None]
    partition_limit: list[int]
    rate_limit: list[str | None]
    eligible_at: list[Any]
    delay: list[float | None]
    unique_key: list[bytes | None]
    unique_scope: list[str | None]
    parent_id: list[int | None]

    @classmethod
    def empty(cls) -> InsertRows:
        return cls([], [], [], [], [], [], [], [], [], [], [], [], [], [])

    def __len__(self) -> int:
        return len(self.fsm)

    def params(self) -> dict[str, Any]:
        return {"batch": NEW_ROW.columns_of(self)}


if tuple(f.name for f in dataclasses.fields(InsertRows)) != NEW_ROW.names:
    raise TypeError("InsertRows must have NEW_ROW's fields, in its order")

# Columns of a new row: one JSON array per row, in NEW_ROW order.
SOURCE = f"""
    (SELECT {NEW_ROW.unpack()}, j.ord
     FROM jsonb_array_elements(%(batch)s::jsonb) WITH ORDINALITY AS j(e, ord)) x
"""

# Insert in unique-key order: two batches carrying the same new keys then take the
# index's tuple locks in one global order and cannot deadlock (§18.7). Rows without a
# key keep their input order. Duplicates, against stored rows or within the batch,
# are dropped by ON CONFLICT whose inference predicate matches the index (§10).
# A row takes its key here and only here: its guard is the key when its scope holds
# `runnable`, the status every instance starts in (§10, revised in v2); a scope
# without it never occupies the key.
BODY = """
INSERT INTO {s}.gen_durable AS g
    (fsm, fsm_version, step, state, queue, priority, partition_key, partition_limit,
     rate_limit, eligible_at, unique_key, unique_scope, unique_guard, parent_id)
SELECT x.fsm, x.fsm_version, x.step, x.state, x.queue,
       x.priority, x.partition_key, x.partition_limit, x.rate_limit,
       coalesce(x.eligible_at, now() + make_interval(secs => coalesce(x.delay, 0))),
       x.unique_key, coalesce(x.unique_scope::{s}.durable_status[], '{}'),
       CASE WHEN 'runnable' = ANY (x.unique_scope::{s}.durable_status[])
            THEN x.unique_key END,
       x.parent_id
FROM """

KEY_ORDER = "ORDER BY x.unique_key NULLS LAST, x.ord"
ON_CONFLICT = "ON CONFLICT (unique_guard) WHERE unique_guard IS NOT NULL DO NOTHING"
RETURNING = "RETURNING g.id, g.queue"


@dataclass(frozen=True, slots=True)
class Inserted:
    """The ids actually inserted, ascending (None: none), and the queues nudged."""

    ids: list[int] | None
    nudged: int


def _insert(body: str) -> str:
    return f"""WITH ins AS ({body}
), nudge AS (
    SELECT pg_notify(%(channel)s, q.queue) FROM (SELECT DISTINCT queue FROM ins) q
)
SELECT array_agg(id ORDER BY id) AS ids, (SELECT count(*) FROM nudge) AS nudged FROM ins"""


_PARAMS = {"batch": "text", "channel": "text", "trace": "text"}

# Client inserts carry the caller's trace context (SPEC §25), one value for the whole
# batch: one insert call runs in one trace. NULL when tracing is off.
TRACED_BODY = BODY.replace("unique_guard, parent_id)", "unique_guard, parent_id, trace_context)")
TRACED_BODY = TRACED_BODY.replace(
    "       x.parent_id\nFROM", "       x.parent_id, %(trace)s::text\nFROM"
)
if TRACED_BODY.count("trace") != 2:
    raise TypeError("the traced insert body no longer matches BODY")

INSERT = Statement(
    "insert",
    "Insert any number of instances in one statement, keys in one global order",
    _insert(f"{TRACED_BODY}{SOURCE}\n{KEY_ORDER}\n{ON_CONFLICT}\n{RETURNING}"),
    _PARAMS,
    Inserted,
)

# A batch without unique keys has no index tuples to take in a global order, and
# nothing that could conflict (a NULL key makes a NULL guard; new rows are not
# executing): it skips the sort and the speculative insertion ON CONFLICT costs per
# row (about 10% of the statement), inserting in input order.
INSERT_UNKEYED = Statement(
    "insert_unkeyed",
    "Insert a batch that carries no unique key: no sort, no speculative insertion",
    _insert(f"{TRACED_BODY}{SOURCE}\n{RETURNING}"),
    _PARAMS,
    Inserted,
)


# -- large batches without keys: binary COPY (SPEC §11, §18.6) -------------------------
#
# COPY skips what the statement pays per row — parsing the batch's JSON, casting each
# field, evaluating the select list — and the driver sends each value in its binary
# form. It returns nothing, so the ids are reserved first, in the same transaction,
# and copied explicitly: ``reserve_ids`` takes them from the table's identity
# sequence (the very values its default would have drawn, so every other insert keeps
# drawing from it without a collision) and returns the transaction's ``now()``, which
# the rows' ``eligible_at`` is computed from exactly as the statement computes it. The
# rows' ``inserted_at``/``updated_at`` defaults read the same ``now()``.
# Only batches the COPY writes exactly as the statement would take it: no unique key
# (nothing to take in a global order or drop as a duplicate), no scope, no parent.


@dataclass(frozen=True, slots=True)
class Reserved:
    """Ids reserved for a batch (ascending), the transaction's clock, queues nudged."""

    ids: list[int]
    now: dt.datetime
    nudged: int


# The sequence is looked up once (MATERIALIZED: otherwise the lookup runs per row, ~7x
# the cost of nextval itself). The queues are notified here, before the COPY: a
# notification is only delivered when the transaction commits, so a batch the COPY
# fails sends none, and a committed one has nudged each of its queues once — as the
# statement does — without one more round trip.
RESERVE_IDS = Statement(
    "reserve_ids",
    "Reserve ids for a batch COPY from the identity sequence, and nudge its queues",
    """
WITH seq AS MATERIALIZED (SELECT pg_get_serial_sequence(%(table)s, 'id')::regclass AS r),
nudge AS (SELECT pg_notify(%(channel)s, q.queue) FROM unnest(%(queues)s::text[]) AS q(queue))
SELECT (SELECT array_agg(nextval(seq.r)) FROM seq, generate_series(1, %(n)s)) AS ids,
       now() AS now, (SELECT count(*) FROM nudge) AS nudged""",
    {"table": "text", "channel": "text", "queues": "text[]", "n": "int4"},
    Reserved,
)

NEW_ROWS_COPY = CopyIn(
    "insert_copy",
    "Write a batch without unique keys, ids reserved, in its binary form",
    "{s}.gen_durable",
    (
        ("id", "int8"),
        ("fsm", "text"),
        ("fsm_version", "int4"),
        ("step", "text"),
        ("state", "jsonb"),
        ("queue", "text"),
        ("priority", "int2"),
        ("partition_key", "text"),
        ("partition_limit", "int2"),
        ("rate_limit", "text"),
        ("eligible_at", "timestamptz"),
        ("trace_context", "text"),
    ),
)
"""The columns a new row's insert sets, less the key's (none here) and ``parent_id``;
the rest take the table's defaults, as in the statement."""
