"""The await-sets increment migrates rows in flight in place, and back (SPEC §16, §19)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

import gen_durable as gd
from gen_durable._db.schema import AWAIT_SETS

from .conftest import FAST, wait_for

BEFORE = AWAIT_SETS - 1


@pytest.fixture
def fresh(dsn: str) -> Iterator[str]:
    name = "m_" + uuid.uuid4().hex[:10]
    yield name
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


class Migrated(gd.FSM):
    """Runs the waits a database of the previous version had in flight."""

    async def step(self, step: str, ctx: gd.Context) -> gd.Outcome:
        if not ctx.awaited:
            return gd.Await("go", ctx.state)
        return gd.Done({"awaited": [s.name for s in ctx.awaited], "timed_out": ctx.timed_out})


def _add(c: psycopg.Connection[Any], schema: str, columns: str, values: str) -> int:
    query = sql.SQL(
        "INSERT INTO {}.gen_durable (fsm, step, " + columns + ") VALUES (%s, 'wait', " + values
        + ") RETURNING id"
    ).format(sql.Identifier(schema))  # fmt: skip
    row = c.execute(query, (Migrated.__gd_name__,)).fetchone()
    assert row is not None
    return int(row[0])


async def _status(engine: gd.Engine, iid: int, status: str) -> bool:
    inst = await engine.get(iid)
    return inst is not None and inst.status == status


async def test_parked_and_woken_rows_of_the_previous_version_migrate_and_wake(dsn, fresh) -> None:
    await gd.migrate(dsn, schema=fresh, version=BEFORE)
    s = sql.Identifier(fresh)
    with psycopg.connect(dsn, autocommit=True) as c:
        parked = _add(c, fresh, "status, awaits", "'awaiting_signal', 'go'")
        # Woken before the upgrade, not yet run: its signal waits in the inbox.
        woken = _add(c, fresh, "status, awaits", "'runnable', 'go'")
        c.execute(
            sql.SQL("INSERT INTO {}.signals (target_id, name) VALUES (%s, 'go')").format(s),
            (woken,),
        )
        plain = _add(c, fresh, "status", "'done'")
    assert await gd.migrate(dsn, schema=fresh) == gd.LATEST_VERSION
    with psycopg.connect(dsn) as c:
        got = c.execute(
            sql.SQL("SELECT id, awaits, await_deadline FROM {}.gen_durable ORDER BY id").format(s)
        ).fetchall()
    assert got == [(parked, ["go"], None), (woken, ["go"], None), (plain, None, None)]
    engine = gd.Engine(dsn, schema=fresh, fsms=[Migrated], **FAST)
    async with engine:
        await wait_for(lambda: _status(engine, woken, "done"))
        assert await _status(engine, parked, "awaiting_signal")
        assert await engine.signal(parked, "go") is True
        await wait_for(lambda: _status(engine, parked, "done"))
        results = [(await engine.get(i)) for i in (parked, woken)]
    for inst in results:
        assert inst is not None and inst.result == {"awaited": ["go"], "timed_out": False}


async def test_down_keeps_one_name_of_a_set_and_drops_the_deadline(dsn, fresh) -> None:
    await gd.migrate(dsn, schema=fresh)
    s = sql.Identifier(fresh)
    deadline = dt.datetime(2031, 1, 1, tzinfo=dt.UTC)
    with psycopg.connect(dsn, autocommit=True) as c:
        parked = _add(
            c,
            fresh,
            "status, awaits, await_deadline",
            f"'awaiting_signal', ARRAY['rejected', 'approved'], '{deadline.isoformat()}'",
        )
    assert await gd.migrate_down(dsn, schema=fresh, version=BEFORE) == BEFORE
    with psycopg.connect(dsn) as c:
        row = c.execute(
            sql.SQL("SELECT status::text, awaits FROM {}.gen_durable WHERE id = %s").format(s),
            (parked,),
        ).fetchone()
    assert row == ("awaiting_signal", "approved")
    assert await gd.migrate(dsn, schema=fresh) == gd.LATEST_VERSION
