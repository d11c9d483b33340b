"""Retention (SPEC §22, §27.6) on real PostgreSQL: the sweep deletes exactly the expired
terminal rows and their inboxes, spares children of live parents, shares the work
between nodes, and never blocks the hot path."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import psycopg
import pytest

import gen_durable as gd
from gen_durable._db import runner
from gen_durable._db.statements.listing import SWEEP
from gen_durable._runtime import retention as retention_module
from gen_durable._runtime.config import build_config
from gen_durable._runtime.retention import Retention
from gen_durable._runtime.stats import Stats

from .conftest import wait_for
from .sqlhelp import claim, complete, connect, count, fan_out, insert, scalar

DAY = 86400.0


async def _age(conn: Any, schema: str, ids: list[int], status: str, days: float) -> None:
    await conn.execute(
        f'UPDATE "{schema}".gen_durable SET status = %s::"{schema}".durable_status, '
        "updated_at = now() - make_interval(secs => %s) WHERE id = ANY(%s)",
        (status, days * DAY, ids),
    )


def _sweeper(dsn: str, schema: str, **options: Any) -> tuple[Retention, list[Any]]:
    config = build_config(dsn, {}, schema=schema, **options)

    async def fetch(stmt: Any) -> list[Any]:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            return await runner.fetch(conn, stmt, raw=True)

    return Retention(config, fetch, Stats(), "test-node", (psycopg.Error,)), []


async def test_the_sweep_deletes_exactly_the_expired_terminal_rows(dsn, schema, q) -> None:
    conn = await connect(dsn)
    async with conn:
        # A live parent's finished children stay; a finished parent's go with it.
        live_parent, live_kids = await fan_out(conn, q, 2)
        await _age(conn, schema, live_kids, "done", 9)
        done_old = await insert(conn, q, *({},) * 3)
        done_new = await insert(conn, q, {})
        failed_mid = await insert(conn, q, {})
        failed_old = await insert(conn, q, {})
        cancelled_old = await insert(conn, q, {})
        live_old = await insert(conn, q, {})
        await _age(conn, schema, done_old, "done", 2)
        await _age(conn, schema, done_new, "done", 0.5)
        await _age(conn, schema, failed_mid, "failed", 3)
        await _age(conn, schema, failed_old, "failed", 8)
        await _age(conn, schema, cancelled_old, "cancelled", 8)
        await _age(conn, schema, live_old, "runnable", 30)
        await conn.execute(
            f'INSERT INTO "{schema}".signals (target_id, name) VALUES (%s, %s), (%s, %s)',
            (done_old[0], "late", done_new[0], "kept"),
        )
        seen: list[dict[str, Any]] = []

        def on_swept(event: str, m: Any, md: Any) -> None:
            seen.append({**m, **md})

        gd.telemetry.attach("gc.swept", on_swept)
        try:
            sweeper, _ = _sweeper(dsn, schema)
            assert await sweeper.sweep() == 5
        finally:
            gd.telemetry.detach("gc.swept", on_swept)
        left = {r[0] for r in await (await conn.execute(
            f'SELECT id FROM "{schema}".gen_durable'
        )).fetchall()}  # fmt: skip
        assert left == {*done_new, *failed_mid, *live_old, live_parent, *live_kids}
        assert await count(conn, schema, "signals") == 1  # the deleted row's inbox went
        assert sorted((e["status"], e["count"]) for e in seen) == [
            ("cancelled", 1),
            ("done", 3),
            ("failed", 1),
        ]
        # Once the parent is finished and old too, the whole family goes.
        await _age(conn, schema, [live_parent], "done", 9)
        assert await sweeper.sweep() == 3


async def test_retention_per_status_and_none(dsn, schema, q) -> None:
    conn = await connect(dsn)
    async with conn:
        ids = await insert(conn, q, *({},) * 3)
        await _age(conn, schema, ids[:1], "done", 2)
        await _age(conn, schema, ids[1:2], "failed", 2)
        await _age(conn, schema, ids[2:], "cancelled", 2)
        assert await _sweeper(dsn, schema, retention=None)[0].sweep() == 0
        only_failed = {"failed": dt.timedelta(days=1), "done": None}
        assert await _sweeper(dsn, schema, retention=only_failed)[0].sweep() == 1
        assert await _sweeper(dsn, schema, retention=DAY)[0].sweep() == 2


@pytest.mark.parametrize(
    "bad", [0, -1, "1d", {"running": 5}, {"done": 0}, float("inf"), True, {"done": "x"}]
)
def test_bad_retention_is_refused(dsn, bad) -> None:
    with pytest.raises(gd.ConfigurationError):
        gd.Engine(dsn, retention=bad)


async def test_two_nodes_sweeping_at_once_delete_each_row_once(dsn, schema, q, monkeypatch):
    monkeypatch.setattr(retention_module, "GC_BATCH", 50)
    conn = await connect(dsn)
    async with conn:
        ids = await insert(conn, q, *({},) * 1200)
        await _age(conn, schema, ids, "done", 2)
        a, _ = _sweeper(dsn, schema)
        b, _ = _sweeper(dsn, schema)
        got = await asyncio.gather(a.sweep(), b.sweep(), a.sweep())
        assert sum(got) == 1200
        assert await count(conn, schema, "gen_durable") == 0


async def test_a_sweep_in_progress_blocks_no_pick_no_outcome_no_join(dsn, schema, q) -> None:
    """§27.6: the sweep's locks sit on expired terminal rows only."""
    observer = await connect(dsn)
    holder = await connect(dsn, autocommit=False)
    async with observer, holder:
        old = await insert(observer, q, *({},) * 20)
        await _age(observer, schema, old, "done", 2)
        parent, kids = await fan_out(observer, q, 2)
        await _age(observer, schema, kids[:1], "done", 9)  # an old child of a live parent
        (job,) = await insert(observer, q, {})
        sweep = SWEEP["done"].bind(schema, {"age": DAY, "limit": 1000})
        deleted = await runner.fetch(holder, sweep, raw=True)  # open, locks held
        assert len(deleted) == 20
        await observer.execute("SET lock_timeout = '2s'")
        got = await claim(observer, q, "node-h:1", limit=10)
        assert job in {r[0] for r in got} and kids[1] in {r[0] for r in got}
        assert await complete(observer, q, id=job, token="node-h:1", kind="done") == [(job, "done")]
        await complete(observer, q, id=kids[1], token="node-h:1", kind="done")
        assert await scalar(  # the join's decrement on the live parent went through
            observer, f'SELECT children_pending FROM "{schema}".gen_durable WHERE id = %s', parent
        ) == 1  # fmt: skip
        await holder.commit()
        assert await count(observer, schema, "gen_durable", "status = 'done'") == 3


async def test_an_engine_sweeps_on_its_own(make_engine) -> None:
    class Quick(gd.Job):
        def perform(self, args: dict[str, Any]) -> Any:
            return "ok"

    async with make_engine(queues={"default": 2}, retention=0.3, gc_interval=0.2) as engine:
        iid = await engine.insert(Quick)

        async def gone() -> bool:
            return await engine.get(iid) is None

        await wait_for(gone, 20)
    async with make_engine(queues={"default": 2}, gc=False) as engine:
        node = engine._node
        assert node is not None
        assert node.supervisor.running("heartbeat")
        assert not node.supervisor.running("retention")
