"""Operator reads and commands: ``gen-durable status``, ``migrate --down``, the demo.

None of these runs on the engine's hot path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..statement import Statement


@dataclass(frozen=True, slots=True)
class QueueCount:
    queue: str
    status: str
    count: int


@dataclass(frozen=True, slots=True)
class MachineCount:
    fsm: str
    status: str
    count: int


@dataclass(frozen=True, slots=True)
class TableRows:
    instances: int
    signals: int


@dataclass(frozen=True, slots=True)
class Backlog:
    queue: str
    ready: int
    scheduled: int
    oldest_ready_age: float | None


@dataclass(frozen=True, slots=True)
class HandedBack:
    fsm: str
    fsm_version: int
    rows: int
    last_error: str | None


@dataclass(frozen=True, slots=True)
class ExpiredLease:
    id: int
    fsm: str
    step: str
    queue: str
    locked_by: str | None
    expired_for: float


def _count_by(column: str) -> str:
    # Terminal rows sit in no partial index (SPEC §2), so this is a sequential scan:
    # acceptable for an operator command or a demo, never to be run in a loop against
    # a big production table.
    return f"""
SELECT {column}, status::text AS status, count(*) AS count FROM {{s}}.gen_durable
GROUP BY {column}, status ORDER BY {column}, status
"""


COUNTS = Statement(
    "admin.counts",
    "Rows by queue and status, for `gen-durable status`",
    _count_by("queue"),
    result=QueueCount,
)

COUNTS_BY_FSM = Statement(
    "admin.counts_by_fsm",
    "Rows by machine and status, for the demo's live progress and summary",
    _count_by("fsm"),
    result=MachineCount,
)

TABLE_ROWS = Statement(
    "admin.table_rows",
    "Every row of both tables: what `migrate --down` to version 0 would drop",
    """
SELECT (SELECT count(*) FROM {s}.gen_durable) AS instances,
       (SELECT count(*) FROM {s}.signals) AS signals
""",
    result=TableRows,
)

# The predicate is gen_durable_pick's, so only runnable rows are read. "Ready" rows are
# eligible now and waiting for a worker; the age of the oldest ready row is how far
# behind the queue is. Rows scheduled for later are counted apart: they are not late.
BACKLOG = Statement(
    "admin.backlog",
    "Runnable backlog per queue: ready, scheduled, and the oldest ready row's age",
    """
SELECT queue,
       count(*) FILTER (WHERE eligible_at <= now()) AS ready,
       count(*) FILTER (WHERE eligible_at > now()) AS scheduled,
       extract(epoch FROM now() - min(eligible_at) FILTER (WHERE eligible_at <= now()))::float8
           AS oldest_ready_age
FROM {s}.gen_durable WHERE status = 'runnable'
GROUP BY queue ORDER BY queue
""",
    result=Backlog,
)

# The scheduler's release writes "no machine 'name' vN on node ..." to last_error, with
# eligible_at = updated_at + the retry delay. A later step keeps last_error, but every
# progressing outcome sets eligible_at = updated_at, so `eligible_at > updated_at`
# drops rows that have run since on a node with the code (only a delayed Replay or
# Next there would still count). Reads the runnable rows only, as the backlog does.
HANDED_BACK = Statement(
    "admin.handed_back",
    "Runnable rows a node handed back for want of their machine (SPEC §13)",
    """
SELECT fsm, fsm_version, count(*) AS rows,
       (array_agg(last_error ORDER BY updated_at DESC))[1] AS last_error
FROM {s}.gen_durable
WHERE status = 'runnable' AND last_error LIKE 'no machine %%' AND eligible_at > updated_at
GROUP BY fsm, fsm_version ORDER BY fsm, fsm_version
""",
    result=HandedBack,
)

# Their worker died or stalled and the reaper has not returned them yet. Walks
# gen_durable_lease (partial on executing) from the oldest expiry, so the cost
# follows the expired set.
EXPIRED_LEASES = Statement(
    "admin.expired_leases",
    "Executing rows whose lease already expired, oldest first",
    """
SELECT id, fsm, step, queue, locked_by,
       extract(epoch FROM now() - lease_expires_at)::float8 AS expired_for
FROM {s}.gen_durable
WHERE status = 'executing' AND lease_expires_at < now()
ORDER BY lease_expires_at
LIMIT %(limit)s
""",
    {"limit": "int8"},
    ExpiredLease,
)

SNAPSHOT: Statement[None] = Statement(
    "admin.snapshot",
    "Make the transaction one read-only snapshot, so `status`'s reads agree",
    "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY",
)

# Taken in the dropping transaction once a first, lock-free count found both tables
# empty: no row inserted in between is dropped unseen.
LOCK_TABLES: Statement[None] = Statement(
    "admin.lock_tables",
    "Lock both tables against every other use before they are dropped",
    "LOCK TABLE {s}.gen_durable, {s}.signals IN ACCESS EXCLUSIVE MODE",
)


def one_line(statement: Statement[Any], schema: str) -> str:
    """A statement's text on one line, for a command a user may paste (``psql -c``)."""
    return " ".join(statement.render(schema).split())
