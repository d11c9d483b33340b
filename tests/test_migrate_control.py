"""The control increment (SPEC §16, §21, §22): a database one version older, with
instances in flight, migrates in place; the new status works at once; the down script
turns cancelled rows into failed ones and the way back up works again."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

import gen_durable as gd
from gen_durable._db.schema import CONTROL_VERSION

from .conftest import FAST, wait_for
from .test_migrate import Upgraded, _statuses, fresh  # noqa: F401

PREVIOUS = CONTROL_VERSION - 1


async def test_rows_in_flight_migrate_in_place_and_control_works(dsn, fresh) -> None:  # noqa: F811
    await gd.migrate(dsn, schema=fresh, version=PREVIOUS)
    s = sql.Identifier(fresh)
    name = Upgraded.__gd_name__
    with psycopg.connect(dsn, autocommit=True) as c:

        def add(columns: str, values: str, *params: Any) -> int:
            query = sql.SQL(
                "INSERT INTO {}.gen_durable (fsm, " + columns + ") VALUES (%s, " + values + ")"
                " RETURNING id"
            ).format(s)
            row = c.execute(query, (name, *params)).fetchone()
            assert row is not None
            return int(row[0])

        parked = add("step, status, awaits", "'wait', 'awaiting_signal', 'go'")
        parked2 = add("step, status, awaits", "'wait', 'awaiting_signal', 'go'")
        parent = add("step, status, children_pending", "'join', 'awaiting_children', 1")
        child = add(
            "step, parent_id, status, awaits", "'wait', %s, 'awaiting_signal', 'go'", parent
        )
        failed = add("step, status, last_error", "'start', 'failed', 'old error'")
        runnable = add("step", "'start'")
    assert await gd.migrate(dsn, schema=fresh) == gd.LATEST_VERSION
    engine = gd.Engine(dsn, schema=fresh, fsms=[Upgraded], **FAST)
    async with engine:
        await wait_for(lambda: _statuses(engine, runnable, "done"), timeout=30)
        inst = await engine.get(runnable)
        assert inst is not None and inst.detached is False
        assert await engine.cancel(parked, "after the upgrade") is True
        assert await engine.cancel(child) is True  # the last slot wakes the parent
        await wait_for(lambda: _statuses(engine, parent, "done"), timeout=30)
        assert await engine.retry(failed) is True
        await wait_for(lambda: _statuses(engine, failed, "done"), timeout=30)
        assert await engine.signal(parked2, "go") is True
        await wait_for(lambda: _statuses(engine, parked2, "done"), timeout=30)
    # Down: a cancelled row becomes failed (its reason kept); up again works.
    assert await gd.migrate_down(dsn, schema=fresh, version=PREVIOUS) == PREVIOUS
    with psycopg.connect(dsn) as c:
        got = c.execute(
            sql.SQL("SELECT status::text, last_error FROM {}.gen_durable WHERE id = %s").format(s),
            (parked,),
        ).fetchone()
        assert got == ("failed", "after the upgrade")
        assert c.execute(
            sql.SQL("SELECT count(*) FROM {}.gen_durable WHERE status::text = 'cancelled'").format(
                s
            )
        ).fetchone() == (0,)
    assert await gd.migrate(dsn, schema=fresh) == gd.LATEST_VERSION
    async with gd.Engine(dsn, schema=fresh, queues={}) as client:
        assert (await client.get(parked)).status == "failed"  # type: ignore[union-attr]
        assert await client.retry(parked) is True
        assert await client.cancel(parked) is True
