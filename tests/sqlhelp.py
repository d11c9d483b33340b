"""Helpers for the SQL-layer tests: run ``Queries`` statements on real connections.

The tests drive the statements of ``gen_durable._db.queries`` directly, the way the
runtime does (``conn.execute(stmt.query, stmt.params)``), and read rows back with
plain SQL. Forced interleavings use :func:`wait_blocked`, which polls ``pg_locks`` until
a given backend is waiting on a lock — never a sleep that hopes the race happened.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from gen_durable._db.queries import CompleteBatch, InsertRows, Queries, Stmt

AConn = psycopg.AsyncConnection[Any]

# Every column of the SPEC §2 table (and of later schema versions), in a fixed order,
# with the enum as text.
COLUMNS = (
    "id, fsm, fsm_version, step, status::text AS status, state, result, awaits, queue, "
    "priority, partition_key, eligible_at, attempt, last_error, locked_by, "
    "lease_expires_at, parent_id, children_pending, unique_key, "
    "unique_scope::text[] AS unique_scope, unique_guard, inserted_at, updated_at, "
    "crash_count, errors, detached, await_deadline"
)

_DEFAULTS: dict[str, Any] = {
    "fsm": "tests.Machine",
    "fsm_version": 1,
    "step": "start",
    "state": '{"n": 0}',
    "queue": "default",
    "priority": 0,
    "partition_key": None,
    "partition_limit": 1,
    "rate_limit": None,
    "eligible_at": None,
    "delay": None,
    "unique_key": None,
    "unique_scope": None,
    "parent_id": None,
}


def rows(*specs: dict[str, Any]) -> InsertRows:
    """Insert arrays for ``specs`` (each a dict of column overrides)."""
    out = InsertRows.empty()
    for spec in specs:
        unknown = set(spec) - set(_DEFAULTS)
        assert not unknown, unknown
        for column, default in _DEFAULTS.items():
            getattr(out, column).append(spec.get(column, default))
    return out


async def run(conn: AConn, stmt: Stmt) -> list[tuple[Any, ...]]:
    cur = await conn.execute(stmt.query, stmt.params)
    return await cur.fetchall() if cur.description else []


async def insert(conn: AConn, q: Queries, *specs: dict[str, Any]) -> list[int]:
    """Insert ``specs`` (default: one plain row) and return the ids inserted."""
    result = await run(conn, q.insert(rows(*(specs or ({},)))))
    return list(result[0][0] or [])


async def claim(
    conn: AConn,
    q: Queries,
    token: str,
    *,
    queue: str = "default",
    limit: int = 10,
    ttl: float = 30.0,
) -> list[tuple[Any, ...]]:
    """Run the pick for ``token``; returns its RETURNING rows."""
    return await run(conn, q.pick(queue, limit, token, ttl))


async def claim_one(conn: AConn, q: Queries, token: str, **kw: Any) -> tuple[Any, ...]:
    got = await claim(conn, q, token, limit=1, **kw)
    assert len(got) == 1, got
    return got[0]


async def complete(conn: AConn, q: Queries, **outcome: Any) -> list[tuple[Any, ...]]:
    """Apply one outcome (``CompleteBatch.add`` keywords); returns (id, status) rows."""
    batch = CompleteBatch.empty()
    batch.add(**outcome)
    return await complete_batch(conn, q, batch)


async def complete_batch(conn: AConn, q: Queries, batch: CompleteBatch) -> list[tuple[Any, ...]]:
    """Run ``complete`` for a batch; returns (id, new status) for each row it matched."""
    return [(r[0], r[1]) for r in await run(conn, q.complete(batch))]


async def signal(
    conn: AConn,
    q: Queries,
    target: int,
    name: str,
    payload: str = "{}",
    dedup_key: str | None = None,
) -> tuple[Any, ...] | None:
    """Deliver a signal; (target status before, new signal id or None, woke) or None."""
    got = await run(conn, q.signal(target, name, payload, dedup_key))
    return got[0] if got else None


async def fetch(conn: AConn, schema: str, instance_id: int) -> dict[str, Any]:
    """Every column of one instance row, as a dict."""
    query = sql.SQL("SELECT {} FROM {}.gen_durable WHERE id = %s").format(
        sql.SQL(COLUMNS), sql.Identifier(schema)
    )
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, (instance_id,))
        row = await cur.fetchone()
    assert row is not None, f"no row {instance_id}"
    return row


async def scalar(conn: AConn, query: str, *params: Any) -> Any:
    cur = await conn.execute(query.encode(), params)
    row = await cur.fetchone()
    assert row is not None
    return row[0]


async def inbox(conn: AConn, schema: str, instance_id: int) -> list[tuple[int, str]]:
    """(id, name) of the signals stored for an instance, oldest first."""
    query = sql.SQL("SELECT id, name FROM {}.signals WHERE target_id = %s ORDER BY id").format(
        sql.Identifier(schema)
    )
    cur = await conn.execute(query, (instance_id,))
    return [(r[0], r[1]) for r in await cur.fetchall()]


async def count(conn: AConn, schema: str, table: str, where: str = "true") -> int:
    query = sql.SQL("SELECT count(*) FROM {}.{} WHERE " + where).format(
        sql.Identifier(schema), sql.Identifier(table)
    )
    cur = await conn.execute(query)
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def set_columns(conn: AConn, schema: str, instance_id: int, **values: Any) -> None:
    """Test setup: write columns of a row directly (e.g. a non-zero attempt)."""
    assignments = sql.SQL(", ").join(
        sql.SQL("{} = {}").format(sql.Identifier(k), sql.Placeholder(k)) for k in values
    )
    query = sql.SQL("UPDATE {}.gen_durable SET {} WHERE id = %(__id)s").format(
        sql.Identifier(schema), assignments
    )
    await conn.execute(query, {**values, "__id": instance_id})


async def connect(dsn: str, *, autocommit: bool = True) -> AConn:
    return await psycopg.AsyncConnection.connect(dsn, autocommit=autocommit)


@asynccontextmanager
async def connections(dsn: str, n: int, *, autocommit: bool = True) -> AsyncIterator[list[AConn]]:
    """``n`` extra connections, closed on exit."""
    conns: list[AConn] = []
    try:
        for _ in range(n):
            conns.append(await connect(dsn, autocommit=autocommit))
        yield conns
    finally:
        for c in conns:
            await c.close()


async def backend_pid(conn: AConn) -> int:
    return int(await scalar(conn, "SELECT pg_backend_pid()"))


async def wait_blocked(observer: AConn, *pids: int, timeout: float = 30.0) -> None:
    """Wait until every backend in ``pids`` is waiting for a lock (``pg_locks``)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        cur = await observer.execute(
            "SELECT count(DISTINCT pid) FROM pg_locks WHERE NOT granted AND pid = ANY(%s)",
            (list(pids),),
        )
        row = await cur.fetchone()
        if row is not None and row[0] == len(pids):
            return
        if loop.time() > deadline:
            raise AssertionError(f"backends {pids} did not block on a lock within {timeout}s")
        await asyncio.sleep(0.01)


def same_except(before: dict[str, Any], after: dict[str, Any], changed: set[str]) -> None:
    """Assert every column outside ``changed`` kept its value."""
    kept = {k: v for k, v in before.items() if k not in changed}
    assert {k: after[k] for k in kept} == kept


async def wait_lock_waiters(
    observer: AConn, needle: str, n: int = 1, timeout: float = 30.0
) -> list[int]:
    """Wait until ``n`` backends whose current query mentions ``needle`` (e.g. the
    test's schema name) are waiting for a lock; returns their pids. ``observer``
    must be in autocommit mode: pg_stat_activity is a snapshot per transaction."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        cur = await observer.execute(
            "SELECT DISTINCT a.pid FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid"
            " WHERE NOT l.granted AND a.pid <> pg_backend_pid() AND strpos(a.query, %s) > 0",
            (needle,),
        )
        pids = [int(r[0]) for r in await cur.fetchall()]
        if len(pids) >= n:
            return pids
        if loop.time() > deadline:
            raise AssertionError(f"{n} backends running {needle!r} not blocked in {timeout}s")
        await asyncio.sleep(0.01)


async def schedule(
    conn: AConn,
    q: Queries,
    parent: int,
    token: str,
    children: InsertRows,
    *,
    state: str | None = None,
    consume: str | None = None,
    seen: list[int] | None = None,
) -> list[tuple[Any, ...]]:
    """Run ``schedule_childs`` for a claimed parent, barrier step ``join``."""
    stmt = q.schedule_childs(
        parent_id=parent,
        token=token,
        next_step="join",
        state=state,
        consume=consume,
        seen=seen or [],
        children=children,
    )
    return await run(conn, stmt)


async def fan_out(
    conn: AConn, q: Queries, n: int, *, state: str | None = None, **child: Any
) -> tuple[int, list[int]]:
    """A parent (claimed as ``node-p:1``) that scheduled ``n`` children carrying the
    ``child`` columns; returns (parent id, inserted child ids)."""
    (parent,) = await insert(conn, q, {"fsm": "tests.Parent"})
    await claim_one(conn, q, "node-p:1")
    kids = rows(*({"fsm": "tests.Child", "parent_id": parent, **child},) * n)
    got = await schedule(conn, q, parent, "node-p:1", kids, state=state)
    assert len(got) == 1 and got[0][0] == parent
    return parent, list(got[0][2] or [])
