"""The flow-control increment (SPEC §16, §23) on a database with instances in flight."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import errors as pg_errors
from psycopg import sql

import gen_durable as gd
from gen_durable._db.schema import FLOW_CONTROL

from . import test_migrate
from .conftest import FAST, wait_for
from .test_migrate import Upgraded, _statuses

fresh = test_migrate.fresh  # the fixture: a schema nobody has created yet

BEFORE = FLOW_CONTROL - 1


def _add(c: psycopg.Connection[Any], schema: str, columns: str, values: str) -> int:
    query = sql.SQL(
        "INSERT INTO {}.gen_durable (fsm, step, "
        + columns
        + ") VALUES (%s, 'start', "
        + values
        + ") RETURNING id"
    ).format(sql.Identifier(schema))
    row = c.execute(query, (Upgraded.__gd_name__,)).fetchone()
    assert row is not None
    return int(row[0])


async def test_rows_in_flight_keep_their_key_guard_across_the_upgrade(dsn, fresh) -> None:
    """A key's executing row (a live claim of a node still running the old release)
    keeps the key through the upgrade: it holds slot 0 of K = 1, the new unique index
    refuses a second executing row of the key, and the key's runnable row runs only
    after the held one is back. Everything else runs as before."""
    await gd.migrate(dsn, schema=fresh, version=BEFORE)
    s = sql.Identifier(fresh)
    with psycopg.connect(dsn, autocommit=True) as c:
        held = _add(
            c,
            fresh,
            "partition_key, status, locked_by, lease_expires_at",
            "'k', 'executing', 'old:1', now() + interval '1 hour'",
        )
        waiting = _add(c, fresh, "partition_key", "'k'")
        plain = _add(c, fresh, "status", "'runnable'")
    assert await gd.migrate(dsn, schema=fresh) == gd.LATEST_VERSION
    with psycopg.connect(dsn, autocommit=True) as c:
        cols = (
            "SELECT partition_limit, partition_slot, rate_limit FROM {}.gen_durable WHERE id = %s"
        )
        assert c.execute(sql.SQL(cols).format(s), (held,)).fetchone() == (1, 0, None)
        with pytest.raises(pg_errors.UniqueViolation):
            c.execute(
                sql.SQL(
                    "UPDATE {}.gen_durable SET status = 'executing', locked_by = 'x:1', "
                    "lease_expires_at = now() + interval '1 minute' WHERE id = %s"
                ).format(s),
                (waiting,),
            )
    engine = gd.Engine(dsn, schema=fresh, fsms=[Upgraded], **{**FAST, "reap_interval": 0.1})
    async with engine:
        await wait_for(lambda: _statuses(engine, plain, "done"), timeout=30)
        inst = await engine.get(waiting)
        assert inst is not None and inst.status == "runnable"  # the key is still held
        with psycopg.connect(dsn, autocommit=True) as c:  # the old node's lease runs out
            c.execute(
                sql.SQL(
                    "UPDATE {}.gen_durable SET lease_expires_at = now() - interval '1 second' "
                    "WHERE id = %s"
                ).format(s),
                (held,),
            )
        for iid in (held, waiting):
            await wait_for(lambda iid=iid: _statuses(engine, iid, "done"), timeout=30)


async def test_down_is_refused_while_a_key_runs_more_than_once(dsn, fresh) -> None:
    await gd.migrate(dsn, schema=fresh)
    with psycopg.connect(dsn, autocommit=True) as c:
        for slot in (0, 1):
            _add(
                c,
                fresh,
                "partition_key, partition_limit, partition_slot, status, locked_by, "
                "lease_expires_at",
                f"'k', 2, {slot}, 'executing', 'n:{slot}', now() + interval '1 minute'",
            )
    with pytest.raises(gd.GenDurableError):
        await gd.migrate_down(dsn, schema=fresh, version=BEFORE)
    assert await gd.migrate(dsn, schema=fresh) == gd.LATEST_VERSION  # still there, whole
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute(
            sql.SQL("UPDATE {}.gen_durable SET status = 'done', locked_by = NULL, "
                    "lease_expires_at = NULL").format(sql.Identifier(fresh))
        )  # fmt: skip
    assert await gd.migrate_down(dsn, schema=fresh, version=BEFORE) == BEFORE
