"""``insert_all``: one statement, or a binary COPY for a large batch without keys
(SPEC §10, §11, §18.6).

A batch with a unique key, a scope or a parent goes through the insert statement:
keys are taken in one global order and duplicates dropped there (§10, §18.7). A batch
of at least :data:`COPY_MIN_ROWS` rows without any of them is written by COPY: ids
reserved from the table's sequence and the queues' notifications queued in one
statement, then the rows in their binary form, in one transaction — every row or
none, and the same rows, ids and nudges as the statement would give. Both forms run
through the runner's error boundary, so they raise the same typed errors.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from itertools import repeat
from typing import Any

import psycopg

from .._trace import capture
from . import runner
from .queries import Queries
from .statements.inserts import NEW_ROWS_COPY, Inserted, InsertRows, Reserved

COPY_MIN_ROWS = 2_000
"""The smallest batch written by COPY. Its fixed cost is two more round trips (the id
reservation, the transaction's BEGIN/COMMIT) and about 1.5 ms more client CPU (the
transaction, the COPY's setup); its per-row cost is lower, on the server above all
(no JSON to unpack, no select list). On two shared cores, CPU per call, client and
server (``bench/insert_copy.py --cpu``): about even at 1,500 rows; at 2,000 COPY
takes 10% less (10.1 against 11.2 µs a row, wall clock 38 against 42 ms), at 10,000
and 100,000 about 27% less."""


def inserted_ids(row: Inserted | None) -> list[int]:
    """The ids an insert statement returned (none when every row was a duplicate)."""
    return list(row.ids or []) if row else []


def copyable(rows: InsertRows, target: object = None) -> bool:
    """True when COPY writes ``rows`` exactly as the insert statement would, on
    ``target`` (a caller's connection in pipeline mode cannot COPY)."""
    n = len(rows)
    if (
        isinstance(target, psycopg.AsyncConnection | psycopg.Connection)
        and target.pgconn.pipeline_status
    ):
        return False
    return (
        n >= COPY_MIN_ROWS
        # list.count compares in C; `any(...)` would take an empty key b"" for none.
        and rows.unique_key.count(None) == n
        and rows.unique_scope.count(None) == n
        and rows.parent_id.count(None) == n
    )


def _eligible(now: dt.datetime, delay: float) -> dt.datetime:
    # The statement's now() + make_interval(secs => delay): PostgreSQL rounds the
    # microseconds half to even (rint), as round() does: the same instant to the µs.
    return now + dt.timedelta(microseconds=round(delay * 1_000_000))


def _copy_rows(rows: InsertRows, trace: str | None) -> runner.Rows[Reserved]:
    """The COPY's rows (:data:`NEW_ROWS_COPY`'s columns) once the ids are reserved:
    the ids in ascending order, given to the rows in input order, as the unkeyed
    statement inserts them. Rows are zipped from the columns in C: only a row with a
    delay costs Python code of its own."""

    def make(reserved: Reserved) -> Iterator[tuple[Any, ...]]:
        n, now = len(rows), reserved.now
        at: Iterable[Any]
        if rows.eligible_at.count(None) == n and rows.delay.count(None) == n:
            at = repeat(now, n)  # the common batch: due at once
        else:
            at = [
                t if t is not None else now if d is None else _eligible(now, d)
                for t, d in zip(rows.eligible_at, rows.delay, strict=True)
            ]
        state: Iterable[str | None] = rows.state
        if None in state:  # None stores {} (JSON_OR_EMPTY)
            state = [v or "{}" for v in rows.state]
        return zip(
            sorted(reserved.ids),
            rows.fsm,
            rows.fsm_version,
            rows.step,
            state,
            rows.queue,
            rows.priority,
            rows.partition_key,
            rows.partition_limit,
            rows.rate_limit,
            at,
            repeat(trace, n),
            strict=True,
        )

    return make


def _plan(queries: Queries, rows: InsertRows) -> tuple[Any, runner.Rows[Reserved]]:
    queues = list(dict.fromkeys(rows.queue))
    return queries.reserve_ids(len(rows), queues), _copy_rows(rows, capture())


async def insert_all(target: runner.AsyncTarget, queries: Queries, rows: InsertRows) -> list[int]:
    """Insert ``rows`` (non-empty) on a pool or the caller's connection; the ids
    inserted, ascending."""
    if not copyable(rows, target):
        inserted = await runner.fetch_one(target, queries.insert(rows))
        return inserted_ids(inserted)
    first, make = _plan(queries, rows)
    reserved = await runner.copy_after(target, first, NEW_ROWS_COPY, queries.schema, make)
    return sorted(reserved.ids)


def insert_all_sync(conn: psycopg.Connection[Any], queries: Queries, rows: InsertRows) -> list[int]:
    """:func:`insert_all` on a sync connection."""
    if not copyable(rows, conn):
        inserted = runner.fetch_one_sync(conn, queries.insert(rows))
        return inserted_ids(inserted)
    first, make = _plan(queries, rows)
    reserved = runner.copy_after_sync(conn, first, NEW_ROWS_COPY, queries.schema, make)
    return sorted(reserved.ids)
