"""The one place that runs statements, and the one error boundary (STYLE §6, §7).

* :func:`fetch` runs one bound statement (:class:`~._db.statement.Stmt`) on a pool —
  borrowing a connection for it — or on a given connection, and returns its rows
  decoded by column name into the statement's result type.
* :func:`fetch_together` runs several statements pipelined in one transaction on one
  pooled connection: one round trip (the completer's flush).
* :func:`copy_after` runs one statement, then a binary COPY of rows made from its
  result, as one unit (``insert_all`` of a large batch without keys).
* :func:`connect` opens a connection; :func:`run_script` runs DDL (migrations).
* :class:`Boundary` translates, for a block that runs several of these.

Client calls get typed errors (:mod:`._db.translate`), the driver's error kept as
``__cause__``. The runtime passes ``raw=True`` and gets psycopg's own errors,
unchanged: it tells a transient failure from a refusal or a lock timeout by their
classes (the completer bisects, isolates and retries on them, schedulers back off).

The sync functions (``*_sync``) are the same steps without ``await``, for
:class:`~gen_durable.SyncClient` and the sync migration path; decoding and
translation are shared, not copied.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, AbstractContextManager, nullcontext
from types import TracebackType
from typing import Any, TypeVar

import psycopg
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool

from .codec import JsonTextBinary
from .statement import CopyIn, Stmt
from .translate import DRIVER_ERRORS, server_of, translate, unreachable

R = TypeVar("R")

AsyncTarget = AsyncConnectionPool[Any] | psycopg.AsyncConnection[Any]
Where = AsyncTarget | psycopg.Connection[Any] | str


def server(where: Where) -> str:
    """``host:port`` of a pool, a connection or a DSN (for messages)."""
    if isinstance(where, str):
        return server_of(where)
    if isinstance(where, AsyncConnectionPool):
        conninfo = where.conninfo
        return server_of(conninfo) if isinstance(conninfo, str) else "the configured server"
    try:
        return f"{where.info.host}:{where.info.port}"
    except psycopg.Error:
        return "the configured server"


class Boundary:
    """Translate driver errors raised in the block (``call`` names what ran)."""

    __slots__ = ("call", "where")

    def __init__(self, call: str, where: Where) -> None:
        self.call = call
        self.where = where

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if isinstance(exc, DRIVER_ERRORS):
            raise translate(exc, call=self.call, server=server(self.where)) from exc


async def fetch(target: AsyncTarget, stmt: Stmt[R], *, raw: bool = False) -> list[R]:
    """Run ``stmt`` on a pool or a connection; its rows, decoded by name."""
    if raw:
        return await _fetch(target, stmt)
    with Boundary(stmt.name, target):
        return await _fetch(target, stmt)


async def fetch_one(target: AsyncTarget, stmt: Stmt[R]) -> R | None:
    """The first row of ``stmt`` (client calls: translated errors), or None."""
    rows = await fetch(target, stmt)
    return rows[0] if rows else None


async def _fetch(target: AsyncTarget, stmt: Stmt[R]) -> list[R]:
    if isinstance(target, AsyncConnectionPool):
        async with target.connection() as conn:
            return await _rows(conn, stmt)
    return await _rows(target, stmt)


async def _rows(conn: psycopg.AsyncConnection[Any], stmt: Stmt[R]) -> list[R]:
    cur = conn.cursor(row_factory=stmt.statement.row_factory)
    await cur.execute(stmt.query, stmt.params)
    return await cur.fetchall() if stmt.statement.result is not None else []


async def fetch_together(
    pool: AsyncConnectionPool[Any], stmts: Sequence[Stmt[Any]], *, raw: bool = False
) -> list[list[Any]]:
    """Run ``stmts`` in one transaction, pipelined (one round trip); their rows."""
    if raw:
        return await _together(pool, stmts)
    with Boundary(", ".join(s.name for s in stmts), pool):
        return await _together(pool, stmts)


async def _together(pool: AsyncConnectionPool[Any], stmts: Sequence[Stmt[Any]]) -> list[list[Any]]:
    async with pool.connection() as conn:
        if len(stmts) == 1:
            return [await _rows(conn, stmts[0])]
        async with conn.pipeline():
            async with conn.transaction():
                curs = []
                for stmt in stmts:
                    cur = conn.cursor(row_factory=stmt.statement.row_factory)
                    curs.append(await cur.execute(stmt.query, stmt.params))
            return [
                await c.fetchall() if s.statement.result is not None else []
                for s, c in zip(stmts, curs, strict=True)
            ]


Rows = Callable[[R], Iterable[Sequence[Any]]]
"""The rows a COPY writes, made from the result row of the statement before it."""


async def copy_after(
    target: AsyncTarget, first: Stmt[R], copy: CopyIn, schema: str, rows: Rows[R]
) -> R:
    """Run ``first`` (one result row), then COPY ``rows(that row)`` into ``copy``'s
    table, as one unit (see :func:`_unit`); the row. Errors are translated (the
    COPY's included: a row the server refuses raises the same typed errors as a
    statement would), and a failure anywhere leaves nothing written."""
    with Boundary(copy.name, target):
        if isinstance(target, AsyncConnectionPool):
            async with target.connection() as conn:
                return await _copy_after(conn, first, copy, schema, rows)
        return await _copy_after(target, first, copy, schema, rows)


def _unit(conn: Any) -> Any:
    """The transaction a statement-then-COPY runs in. An autocommit connection outside
    any transaction (a pooled one, or a caller's) gets one of its own, committed at
    the end; otherwise the caller's transaction — open, or opened implicitly by the
    first statement on a non-autocommit connection — is the unit, and the caller
    commits or rolls it back, exactly as with a single statement (``conn=``, SPEC §11).
    No savepoint: a failure aborts the caller's transaction, as a failed statement does."""
    if conn.autocommit and conn.info.transaction_status == TransactionStatus.IDLE:
        return conn.transaction()
    return nullcontext()


async def _copy_after(
    conn: psycopg.AsyncConnection[Any], first: Stmt[R], copy: CopyIn, schema: str, rows: Rows[R]
) -> R:
    unit: AbstractAsyncContextManager[Any] = _unit(conn)
    async with unit:
        (head,) = await _rows(conn, first)
        await copy_rows(conn, copy, schema, rows(head))
    return head


async def copy_rows(
    conn: psycopg.AsyncConnection[Any], copy: CopyIn, schema: str, rows: Iterable[Sequence[Any]]
) -> None:
    """The COPY alone, raw errors, in whatever transaction ``conn`` is in."""
    cur = conn.cursor()
    cur.adapters.register_dumper(None, JsonTextBinary)
    async with cur.copy(copy.text(schema)) as out:
        out.set_types(copy.types)
        for row in rows:
            await out.write_row(row)


async def connect(dsn: str, *, timeout: float | None = None) -> psycopg.AsyncConnection[Any]:
    """A new autocommit connection; ``DatabaseUnavailable`` when it cannot be opened
    (``ConfigurationError`` for a malformed DSN)."""
    try:
        coro = psycopg.AsyncConnection.connect(dsn, autocommit=True)
        return await asyncio.wait_for(coro, timeout)
    except TimeoutError as exc:
        raise unreachable(TimeoutError(f"no answer within {timeout:g}s"), server_of(dsn)) from exc
    except DRIVER_ERRORS as exc:
        raise unreachable(exc, server_of(dsn)) from exc


async def run_script(conn: psycopg.AsyncConnection[Any], script: str) -> None:
    """Run DDL text (raw errors: a migration tells a name clash apart itself)."""
    await conn.execute(script.encode())


# -- the sync twin ---------------------------------------------------------------------


def fetch_sync(conn: psycopg.Connection[Any], stmt: Stmt[R], *, raw: bool = False) -> list[R]:
    """:func:`fetch` on a sync connection."""
    if raw:
        return _rows_sync(conn, stmt)
    with Boundary(stmt.name, conn):
        return _rows_sync(conn, stmt)


def fetch_one_sync(conn: psycopg.Connection[Any], stmt: Stmt[R]) -> R | None:
    rows = fetch_sync(conn, stmt)
    return rows[0] if rows else None


def _rows_sync(conn: psycopg.Connection[Any], stmt: Stmt[R]) -> list[R]:
    cur = conn.cursor(row_factory=stmt.statement.row_factory)
    cur.execute(stmt.query, stmt.params)
    return cur.fetchall() if stmt.statement.result is not None else []


def copy_after_sync(
    conn: psycopg.Connection[Any], first: Stmt[R], copy: CopyIn, schema: str, rows: Rows[R]
) -> R:
    """:func:`copy_after` on a sync connection."""
    with Boundary(copy.name, conn):
        unit: AbstractContextManager[Any] = _unit(conn)
        with unit:
            (head,) = _rows_sync(conn, first)
            cur = conn.cursor()
            cur.adapters.register_dumper(None, JsonTextBinary)
            with cur.copy(copy.text(schema)) as out:
                out.set_types(copy.types)
                for row in rows(head):
                    out.write_row(row)
        return head


def connect_sync(dsn: str) -> psycopg.Connection[Any]:
    """:func:`connect`, synchronously."""
    try:
        return psycopg.connect(dsn, autocommit=True)
    except DRIVER_ERRORS as exc:
        raise unreachable(exc, server_of(dsn)) from exc


def run_script_sync(conn: psycopg.Connection[Any], script: str) -> None:
    conn.execute(script.encode())
