"""Errors at one boundary (SPEC §15, §26): every client call raises only typed errors.

Real servers and real failures, no mocks: a port nothing listens on, a server that
goes away under a started engine, a backend terminated while a call waits on a row
lock, and a lock timeout. Each gives a ``gd.GenDurableError`` subclass whose message
says what to do, with psycopg's error as ``__cause__``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import pydantic
import pytest
from psycopg.conninfo import make_conninfo

import gen_durable as gd

from .conftest import wait_for
from .sqlhelp import wait_lock_waiters


class Ticket(gd.FSM, name="errors.ticket"):
    class State(gd.State):
        n: int = 0

    async def step(self, step: str, ctx: gd.Context) -> gd.Outcome:
        return gd.Await("go", ctx.state)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _down_dsn() -> str:
    # A password, to check that no message ever shows it.
    return f"postgresql://postgres:s3cret-pw@127.0.0.1:{free_port()}/test"


def _typed(exc: BaseException, kind: type[gd.GenDurableError], *words: str) -> None:
    assert isinstance(exc, kind), repr(exc)
    assert isinstance(exc.__cause__, psycopg.Error | OSError), repr(exc.__cause__)
    text = str(exc)
    assert "s3cret-pw" not in text
    for word in words:
        assert word in text, text


def _async_calls(engine: gd.Engine, iid: int) -> dict[str, Callable[[], Awaitable[Any]]]:
    return {
        "insert": lambda: engine.insert(Ticket, state={"n": 1}),
        "insert_all": lambda: engine.insert_all([Ticket, gd.Spec(Ticket, state={"n": 2})]),
        "signal": lambda: engine.signal(iid, "go", {"x": 1}),
        "deliver": lambda: engine.deliver(iid, "go", dedup_key="d"),
        "get": lambda: engine.get(iid),
        "wait": lambda: engine.wait(iid, timeout=5),
        "inbox": lambda: engine.inbox(iid),
        "children": lambda: engine.children(iid),
    }


def _sync_calls(client: gd.SyncClient, iid: int) -> dict[str, Callable[[], Any]]:
    return {
        "insert": lambda: client.insert(Ticket, state={"n": 1}),
        "insert_all": lambda: client.insert_all([Ticket, gd.Spec(Ticket, state={"n": 2})]),
        "signal": lambda: client.signal(iid, "go", {"x": 1}),
        "get": lambda: client.get(iid),
        "wait": lambda: client.wait(iid, timeout=5),
        "inbox": lambda: client.inbox(iid),
        "children": lambda: client.children(iid),
    }


# -- a server nobody runs --------------------------------------------------------------


async def test_starting_an_engine_without_a_server_says_so(schema) -> None:
    for queues in ({}, {"default": 2}):
        engine = gd.Engine(_down_dsn(), queues=queues, schema=schema)
        with pytest.raises(gd.DatabaseUnavailable) as info:
            await engine.start()
        _typed(info.value, gd.DatabaseUnavailable, "cannot reach PostgreSQL at 127.0.0.1:")
        assert "is the server running? check the DSN" in str(info.value)
        assert isinstance(info.value.__cause__, psycopg.OperationalError)
        assert not engine.started
        for call in _async_calls(engine, 1).values():
            with pytest.raises(gd.GenDurableError, match="not started"):
                await call()


def test_every_sync_client_call_without_a_server_is_typed() -> None:
    with gd.SyncClient(_down_dsn(), schema="public") as client:
        for name, call in _sync_calls(client, 1).items():
            with pytest.raises(gd.DatabaseUnavailable) as info:
                call()
            _typed(info.value, gd.DatabaseUnavailable, "127.0.0.1:", "is the server running")
            assert info.value.__cause__ is not None, name


async def test_migrating_without_a_server_is_typed_too() -> None:
    with pytest.raises(gd.DatabaseUnavailable) as info:
        await gd.migrate(_down_dsn())
    _typed(info.value, gd.DatabaseUnavailable, "cannot reach PostgreSQL at 127.0.0.1:")
    with pytest.raises(gd.DatabaseUnavailable) as sync_info:
        gd.migrate_sync(_down_dsn())
    _typed(sync_info.value, gd.DatabaseUnavailable, "cannot reach PostgreSQL at 127.0.0.1:")


async def test_bad_input_stays_a_validation_error_before_any_connection() -> None:
    """Validation comes first: with no server at all, bad state is pydantic's error."""
    with gd.SyncClient(_down_dsn()) as client, pytest.raises(pydantic.ValidationError):
        client.insert(Ticket, state={"n": "not a number"})


def test_a_malformed_dsn_is_a_configuration_error_that_hides_it() -> None:
    client = gd.SyncClient("postgresql:/x:s3cret-pw@host:bad")
    with client, pytest.raises(gd.ConfigurationError) as info:
        client.get(1)
    assert "s3cret-pw" not in str(info.value) and "connection string" in str(info.value)
    assert isinstance(info.value.__cause__, psycopg.ProgrammingError)


# -- a server that goes away -----------------------------------------------------------


async def _terminate(observer: psycopg.AsyncConnection[Any], app: str) -> int:
    cur = await observer.execute(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s",
        (app,),
    )
    row = await cur.fetchone()
    assert row is not None

    async def gone() -> bool:
        cur = await observer.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app,)
        )
        left = await cur.fetchone()
        return left is not None and left[0] == 0

    await wait_for(gone, timeout=10)
    return int(row[0])


async def test_every_engine_call_after_the_server_went_away_is_typed(dsn, schema, conn) -> None:
    """For each call, a started engine whose pooled connections the server then
    terminates: the call meets a dead connection and must say so, typed."""
    async with gd.Engine(dsn, queues={}, schema=schema) as setup:
        iid = await setup.insert(Ticket)
    for name in _async_calls(setup, iid):
        app = "gd-walk-" + uuid.uuid4().hex[:8]
        engine = gd.Engine(make_conninfo(dsn, application_name=app), queues={}, schema=schema)
        async with engine:

            async def ready(e: gd.Engine = engine) -> bool:
                return e._require_pool().get_stats().get("pool_available", 0) == 2

            await wait_for(ready, timeout=30)
            assert await _terminate(conn, app) == 2
            with pytest.raises(gd.DatabaseUnavailable) as info:
                await _async_calls(engine, iid)[name]()
        _typed(info.value, gd.DatabaseUnavailable, "lost during the call", "Retry")
        assert isinstance(info.value.__cause__, psycopg.OperationalError), name


async def test_sync_client_reconnects_after_the_server_dropped_it(dsn, schema, conn) -> None:
    app = "gd-sync-" + uuid.uuid4().hex[:8]
    with gd.SyncClient(make_conninfo(dsn, application_name=app), schema=schema) as client:
        iid = client.insert(Ticket)
        await _terminate(conn, app)
        with pytest.raises(gd.DatabaseUnavailable) as info:
            client.get(iid)
        _typed(info.value, gd.DatabaseUnavailable, "lost during the call")
        got = client.get(iid)  # a new connection: the server is there again
        assert got is not None and got.id == iid


async def test_a_backend_killed_while_the_call_waits_on_a_row_lock(dsn, schema, conn) -> None:
    """A signal blocks on the target's row lock (another transaction holds it); the
    server terminates the signal's backend: the call fails typed, and nothing was
    stored."""
    async with gd.Engine(dsn, queues={}, schema=schema, pool_size=2) as engine:
        iid = await engine.insert(Ticket)
        async with await psycopg.AsyncConnection.connect(dsn) as holder:
            await holder.execute(
                f'SELECT 1 FROM "{schema}".gen_durable WHERE id = %s FOR UPDATE', (iid,)
            )
            call = asyncio.ensure_future(engine.signal(iid, "go", {"x": 1}))
            (pid,) = await wait_lock_waiters(conn, schema, 1)
            await conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
            with pytest.raises(gd.DatabaseUnavailable) as info:
                await call
            await holder.rollback()
        _typed(info.value, gd.DatabaseUnavailable, "lost during the call", "may or may not")
        assert isinstance(info.value.__cause__, psycopg.errors.AdminShutdown)
        assert await engine.inbox(iid) == []  # the pool replaced the connection


# -- a lock timeout ---------------------------------------------------------------------


async def test_a_lock_timeout_is_a_database_error_that_says_what_to_do(dsn, schema) -> None:
    impatient = make_conninfo(dsn, options="-c lock_timeout=100")
    async with gd.Engine(impatient, queues={}, schema=schema) as engine:
        iid = await engine.insert(Ticket)
        async with await psycopg.AsyncConnection.connect(dsn) as holder:
            await holder.execute(
                f'SELECT 1 FROM "{schema}".gen_durable WHERE id = %s FOR UPDATE', (iid,)
            )
            with pytest.raises(gd.DatabaseError) as info:
                await engine.signal(iid, "go")
            client = gd.SyncClient(impatient, schema=schema)
            with client, pytest.raises(gd.DatabaseError) as sync_info:
                client.signal(iid, "go")
            await holder.rollback()
    for exc in (info.value, sync_info.value):
        assert not isinstance(exc, gd.DatabaseUnavailable)
        _typed(exc, gd.DatabaseError, "PostgreSQL refused", "lock_timeout", "retry later")
        assert exc.sqlstate == "55P03"
        assert isinstance(exc.__cause__, psycopg.errors.LockNotAvailable)


# -- what stays as it was ---------------------------------------------------------------


async def test_refusals_of_the_callers_data_stay_encoding_errors(make_engine) -> None:
    async with make_engine(queues={}) as engine:
        with pytest.raises(gd.EncodingError) as info:
            await engine.insert(Ticket, unique_key=os.urandom(10_000))
    assert "digest" in str(info.value)
    assert isinstance(info.value.__cause__, psycopg.errors.ProgramLimitExceeded)


def test_the_cli_names_an_unknown_machine_with_not_found() -> None:
    from gen_durable.cli.common import resolve_machine

    with pytest.raises(gd.NotFound) as info:
        resolve_machine("no.such.Machine")
    assert info.value.fsm == "no.such.Machine"
    assert "unknown machine 'no.such.Machine'" in str(info.value) and "--app" in str(info.value)
