"""What the dashboard reads and does (SPEC §25): ``dashboard.*``.

The overview must stay cheap on a table that is mostly finished rows: terminal rows
sit in no partial index, so nothing here counts them exactly. Live work is counted
through the partial indexes that hold it (``gen_durable_pick`` for runnable rows,
``gen_durable_lease`` for executing ones), each count capped; every status is also estimated from
the planner's statistics (``pg_class.reltuples`` × the status column's most common
frequencies), which costs a catalog read whatever the table's size. Throughput is
estimated from a 1 % block sample, so its cost is a hundredth of a scan and it never
locks anything.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from ..statement import Statement


@dataclass(frozen=True, slots=True)
class LiveCount:
    queue: str
    status: str
    count: int
    capped: bool
    oldest_age: float | None


@dataclass(frozen=True, slots=True)
class StatusEstimate:
    status: str
    estimate: int


@dataclass(frozen=True, slots=True)
class Finished:
    status: str
    per_minute: float


@dataclass(frozen=True, slots=True)
class LeaseHolder:
    node: str
    leases: int
    expired: int


@dataclass(frozen=True, slots=True)
class Row:
    id: int
    fsm: str
    step: str
    status: str
    queue: str
    attempt: int
    partition_key: str | None
    parent_id: int | None
    last_error: str | None
    updated_at: dt.datetime


@dataclass(frozen=True, slots=True)
class Expired:
    count: int


@dataclass(frozen=True, slots=True)
class TreeNode:
    id: int
    parent_id: int | None
    depth: int
    fsm: str
    step: str
    status: str


@dataclass(frozen=True, slots=True)
class Deleted:
    id: int


# Live work without reading all of it: the (queue, priority) pairs that have runnable
# rows are found by a loose index scan of gen_durable_pick (one probe per pair), and
# the oldest due row of a queue is the earliest of its pairs' first entries. Due and
# scheduled rows are counted per queue up to %(cap)s entries of that index, executing
# rows through gen_durable_lease up to %(cap)s in all. A count that reached the cap is
# marked `capped` and shown as a lower bound: the cost is bounded by the cap and the
# number of queues and priorities, never by the table.
LIVE = Statement(
    "dashboard.live",
    "Live counts per queue (capped) with the oldest due runnable age, index-driven",
    """
WITH RECURSIVE qp AS (
    (SELECT queue, priority FROM {s}.gen_durable WHERE status = 'runnable'
     ORDER BY queue, priority LIMIT 1)
    UNION ALL
    SELECT n.queue, n.priority FROM qp CROSS JOIN LATERAL (
        SELECT g.queue, g.priority FROM {s}.gen_durable g
        WHERE g.status = 'runnable' AND (g.queue, g.priority) > (qp.queue, qp.priority)
        ORDER BY g.queue, g.priority LIMIT 1) n
), first_due AS (
    SELECT qp.queue, min((SELECT g.eligible_at FROM {s}.gen_durable g
         WHERE g.status = 'runnable' AND g.queue = qp.queue AND g.priority = qp.priority
           AND g.eligible_at <= now()
         ORDER BY g.eligible_at LIMIT 1)) AS first_at
    FROM qp GROUP BY qp.queue
), per_queue AS (
    SELECT f.queue, f.first_at,
        (SELECT count(*) FROM (SELECT 1 FROM {s}.gen_durable g
         WHERE g.status = 'runnable' AND g.queue = f.queue AND g.eligible_at <= now()
         LIMIT %(cap)s) x) AS due,
        (SELECT count(*) FROM (SELECT 1 FROM {s}.gen_durable g
         WHERE g.status = 'runnable' AND g.queue = f.queue AND g.eligible_at > now()
         LIMIT %(cap)s) x) AS later
    FROM first_due f
), executing AS (
    SELECT queue FROM {s}.gen_durable
    WHERE status = 'executing' AND lease_expires_at IS NOT NULL LIMIT %(cap)s
)
SELECT queue, 'runnable' AS status, due AS count, due >= %(cap)s AS capped,
       extract(epoch FROM now() - first_at)::float8 AS oldest_age
FROM per_queue WHERE due > 0
UNION ALL
SELECT queue, 'scheduled', later, later >= %(cap)s, NULL::float8
FROM per_queue WHERE later > 0
UNION ALL
SELECT queue, 'executing', count(*), (SELECT count(*) FROM executing) >= %(cap)s, NULL
FROM executing GROUP BY queue
ORDER BY 1, 2
""",
    {"cap": "int4"},
    LiveCount,
)

ESTIMATES = Statement(
    "dashboard.estimates",
    "Rows per status estimated from the planner's statistics (no scan)",
    """
SELECT v.status, round(greatest(c.reltuples, 0) * v.freq)::int8 AS estimate
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL (
    SELECT s.vals[i] AS status, s.freqs[i] AS freq
    FROM pg_stats st
    CROSS JOIN LATERAL (
        SELECT st.most_common_vals::text::text[] AS vals, st.most_common_freqs AS freqs
    ) s
    CROSS JOIN LATERAL generate_subscripts(s.vals, 1) AS i
    WHERE st.schemaname = n.nspname AND st.tablename = c.relname
      AND st.attname = 'status'
) v
WHERE n.nspname = %(schema)s AND c.relname = 'gen_durable'
ORDER BY 1
""",
    {"schema": "text"},
    StatusEstimate,
)

THROUGHPUT = Statement(
    "dashboard.throughput",
    "Finished rows per minute over the last minutes, from a 1% block sample",
    """
SELECT status::text AS status,
       (count(*) * 100.0 / %(minutes)s)::float8 AS per_minute
FROM {s}.gen_durable TABLESAMPLE SYSTEM (1) REPEATABLE (0)
WHERE status IN ('done', 'failed', 'cancelled')
  AND updated_at > now() - make_interval(mins => %(minutes)s)
GROUP BY status ORDER BY status
""",
    {"minutes": "int4"},
    Finished,
)

NODES = Statement(
    "dashboard.nodes",
    "Nodes holding leases, from at most `cap` executing rows (gen_durable_lease)",
    """
SELECT regexp_replace(locked_by, ':[0-9]+$', '') AS node, count(*) AS leases,
       count(*) FILTER (WHERE lease_expires_at < now()) AS expired
FROM (SELECT locked_by, lease_expires_at FROM {s}.gen_durable
      WHERE status = 'executing' AND lease_expires_at IS NOT NULL LIMIT %(cap)s) e
GROUP BY 1 ORDER BY 1
""",
    {"cap": "int4"},
    LeaseHolder,
)

EXPIRED = Statement(
    "dashboard.expired",
    "Expired leases, exactly: a range of gen_durable_lease",
    """
SELECT count(*) AS count FROM {s}.gen_durable
WHERE status = 'executing' AND lease_expires_at < now()
""",
    result=Expired,
)

# Keyset paging, newest first: the primary key walked backwards from `before`. A NULL
# filter matches every row; every value is a parameter.
LIST = Statement(
    "dashboard.list",
    "One page of instances, newest first, with the list filters (keyset by id)",
    """
SELECT id, fsm, step, status::text AS status, queue, attempt, partition_key,
       parent_id, last_error, updated_at
FROM {s}.gen_durable
WHERE id < %(before)s
  AND (%(fsm)s::text IS NULL OR fsm = %(fsm)s)
  AND (%(queue)s::text IS NULL OR queue = %(queue)s)
  AND (%(status)s::text IS NULL OR status::text = %(status)s)
  AND (%(step)s::text IS NULL OR step = %(step)s)
  AND (%(partition_key)s::text IS NULL OR partition_key = %(partition_key)s)
  AND (%(parent)s::int8 IS NULL OR parent_id = %(parent)s)
  AND (%(error)s::text IS NULL OR strpos(last_error, %(error)s) > 0)
ORDER BY id DESC LIMIT %(limit)s
""",
    {
        "before": "int8",
        "fsm": "text",
        "queue": "text",
        "status": "text",
        "step": "text",
        "partition_key": "text",
        "parent": "int8",
        "error": "text",
        "limit": "int4",
    },
    Row,
)

# The descendants of one instance through gen_durable_parent, bounded in depth and
# size so a huge fan-out cannot make the page slow.
TREE = Statement(
    "dashboard.tree",
    "An instance's descendants as a tree, depth-first (gen_durable_parent)",
    """
WITH RECURSIVE tree AS (
    SELECT id, parent_id, 1 AS depth, fsm, step, status::text AS status,
           ARRAY[id] AS path
    FROM {s}.gen_durable WHERE parent_id = %(id)s
    UNION ALL
    SELECT g.id, g.parent_id, t.depth + 1, g.fsm, g.step, g.status::text, t.path || g.id
    FROM tree t JOIN {s}.gen_durable g ON g.parent_id = t.id
    WHERE t.depth < %(depth)s
)
SELECT id, parent_id, depth, fsm, step, status FROM tree ORDER BY path LIMIT %(limit)s
""",
    {"id": "int8", "depth": "int4", "limit": "int4"},
    TreeNode,
)

DELETE_FINISHED = Statement(
    "dashboard.delete",
    "Delete one finished instance (its signals cascade, children are detached)",
    """
DELETE FROM {s}.gen_durable WHERE id = %(id)s AND status IN ('done', 'failed', 'cancelled')
RETURNING id
""",
    {"id": "int8"},
    Deleted,
)


CAP = 1_000
"""The most index entries one live count reads; a count that reaches it is a bound."""


def list_params(filters: dict[str, Any], before: int | None, limit: int) -> dict[str, Any]:
    """The parameters of :data:`LIST`; absent filters are NULL."""
    params: dict[str, Any] = {k: filters.get(k) for k in LIST.params}
    params["before"] = before if before is not None else 2**63 - 1
    params["limit"] = limit
    return params
