"""Cancel with cascade (SPEC §21, §27.2) on real PostgreSQL: parked, runnable and
running instances, a three-level tree, and the parent racing its own cancel."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

import gen_durable as gd

from .conftest import wait_for
from .sqlhelp import (
    claim_one,
    connect,
    fan_out,
    fetch,
    insert,
    rows,
    schedule,
    wait_lock_waiters,
)
from .test_engine_basics import status_is

STOPPED: dict[str, asyncio.Event] = {}
THREAD_GO = threading.Event()
THREAD_DONE = threading.Event()


class Parked(gd.FSM):
    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        if step == "start":
            return gd.Await("go", ctx.state)
        return gd.Done()


class Forever(gd.FSM):
    """An async step that only ends by being cancelled; it says so."""

    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        try:
            await asyncio.sleep(120)
        except asyncio.CancelledError:
            STOPPED.setdefault(str(ctx.id), asyncio.Event()).set()
            raise
        return gd.Done("not cancelled")


class Blocking(gd.FSM):
    """A ``def`` step: cannot be interrupted; its outcome must be dropped."""

    def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        THREAD_GO.wait(60)
        THREAD_DONE.set()
        return gd.Done("late")


class Leaf(gd.FSM):
    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        await asyncio.sleep(120)  # the behaviour under test: a step running when cancelled
        return gd.Done()


class Middle(gd.FSM):
    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        if step == "start":
            return gd.ScheduleChilds("join", [Leaf, Leaf], ctx.state)
        return gd.Done()


class Root(gd.FSM):
    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        if step == "start":
            return gd.ScheduleChilds("join", [Middle, Middle], ctx.state)
        return gd.Done()


async def test_cancel_a_parked_instance_and_what_it_returns(make_engine) -> None:
    async with make_engine(queues={}) as client:
        iid = await client.insert(Parked)
        await _park(client, iid)
        assert await client.cancel(iid, "operator says no") is True
        inst = await client.get(iid)
        assert inst is not None and inst.status == "cancelled" and inst.terminal
        assert inst.last_error == "operator says no" and inst.awaits is None
        assert inst.locked_by is None and inst.lease_expires_at is None
        assert await client.cancel(iid) is False  # already terminal
        assert await client.signal(iid, "go") is False  # refused like any terminal row
        assert (await client.wait(iid, timeout=5)).status == "cancelled"
        with pytest.raises(gd.NoSuchInstance):
            await client.cancel(iid + 1000)
        with pytest.raises(gd.NoSuchInstance):
            await client.cancel("key")  # a key no row ever carried (SPEC §20)
        with pytest.raises(gd.ConfigurationError):
            await client.cancel(1.5)  # type: ignore[arg-type]


async def _park(client: gd.Engine, iid: int) -> None:
    """Make ``iid`` awaiting_signal directly: the test is about cancel, not parking."""
    pool = client._require_pool()
    async with pool.connection() as conn:
        await conn.execute(
            f'UPDATE "{client.config.schema}".gen_durable '
            "SET status = 'awaiting_signal', awaits = ARRAY['go'] WHERE id = %s",
            (iid,),
        )


async def test_a_cancelled_runnable_row_is_never_picked(make_engine) -> None:
    async with make_engine(queues={}) as client:
        iid = await client.insert(Forever)
        assert await client.cancel(iid)
    async with make_engine(queues={"default": 2}) as engine:
        other = await engine.insert(Parked)
        await wait_for(lambda: _status(engine, other, "awaiting_signal"), 15)
        inst = await engine.get(iid)
        assert inst is not None and inst.status == "cancelled" and inst.attempt == 0


async def _status(engine: gd.Engine, iid: int, status: str) -> bool:
    inst = await engine.get(iid)
    return inst is not None and inst.status == status


@pytest.mark.parametrize("listen", [True, False])
async def test_cancel_stops_a_running_async_step(make_engine, listen: bool) -> None:
    """With LISTEN the node hears of it at once; without, at the next heartbeat."""
    async with make_engine(queues={"default": 2}, listen=listen) as engine:
        iid = await engine.insert(Forever)
        await status_is(engine, iid, "executing")
        STOPPED[str(iid)] = asyncio.Event()
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await engine.cancel(iid, "stop it")
        await asyncio.wait_for(STOPPED[str(iid)].wait(), 15)
        if listen:  # heartbeat_interval is 1 s in FAST: only LISTEN beats it reliably
            assert loop.time() - started < 5
        inst = await engine.get(iid)
        assert inst is not None and inst.status == "cancelled" and inst.last_error == "stop it"
        assert inst.result is None


async def test_a_def_step_runs_to_its_end_and_its_outcome_is_dropped(make_engine) -> None:
    THREAD_GO.clear()
    THREAD_DONE.clear()
    async with make_engine(queues={"default": 2}) as engine:
        iid = await engine.insert(Blocking)
        await status_is(engine, iid, "executing")
        assert await engine.cancel(iid)
        THREAD_GO.set()
        await asyncio.get_running_loop().run_in_executor(None, THREAD_DONE.wait, 15)
        # The thread's outcome reaches the completer, whose guard refuses it.
        await wait_for(lambda: _quiet(engine), 15)
        inst = await engine.get(iid)
        assert inst is not None and inst.status == "cancelled" and inst.result is None


async def _quiet(engine: gd.Engine) -> bool:
    node = engine._node
    assert node is not None
    return not any(s.running for s in node.schedulers.values())


async def test_cascade_leaves_no_live_descendant_in_a_three_level_tree(make_engine) -> None:
    seen: list[dict[str, Any]] = []

    def on_cancel(event: str, measurements: Any, metadata: Any) -> None:
        seen.append({**measurements, **metadata})

    gd.telemetry.attach("instance.cancelled", on_cancel)
    try:
        async with make_engine(queues={"default": 8}) as engine:
            root = await engine.insert(Root)

            async def leaves_running() -> bool:
                got = await engine.list(machine=Leaf, status="executing")
                return len(got) == 4

            await wait_for(leaves_running, 20)
            assert await engine.cancel(root, "tree down")
            tree = await engine.list(limit=100)
            assert len(tree) == 7
            assert {i.status for i in tree} == {"cancelled"}
            assert all(i.children_pending == 0 for i in tree)
            await wait_for(lambda: _quiet(engine), 15)
            assert {i.status for i in await engine.list(limit=100)} == {"cancelled"}
    finally:
        gd.telemetry.detach("instance.cancelled", on_cancel)
    assert seen[0]["id"] == root and seen[0]["count"] == 7 and seen[0]["reason"] == "tree down"


async def test_no_cascade_releases_the_parents_barrier(make_engine) -> None:
    async with make_engine(queues={}) as client:
        schema = client.config.schema
        q = client.queries
        conn = await connect(client.config.dsn)
        async with conn:
            parent, kids = await fan_out(conn, q, 2)
            assert await client.cancel(kids[0], cascade=False)
            row = await fetch(conn, schema, parent)
            assert row["status"] == "awaiting_children" and row["children_pending"] == 1
            assert await client.cancel(kids[1])  # the last slot wakes the parent
            row = await fetch(conn, schema, parent)
            assert row["status"] == "runnable" and row["children_pending"] == 0


async def test_cancel_waits_for_a_parent_scheduling_children_and_cancels_them(
    make_engine,
) -> None:
    """§27.2, the parent's ScheduleChilds commits first: the cancel, blocked on the
    parent's lock meanwhile, still finds and cancels every child."""
    async with make_engine(queues={}) as client:
        schema, q = client.config.schema, client.queries
        observer = await connect(client.config.dsn)
        holder = await connect(client.config.dsn, autocommit=False)
        async with observer, holder:
            (parent,) = await insert(observer, q, {"fsm": "tests.Parent"})
            await claim_one(observer, q, "node-p:1")
            kids = rows(*({"fsm": "tests.Child", "parent_id": parent},) * 3)
            got = await schedule(holder, q, parent, "node-p:1", kids)  # not committed yet
            assert got and len(got[0][2]) == 3
            task = asyncio.create_task(client.cancel(parent, "race"))
            await wait_lock_waiters(observer, schema)
            await holder.commit()
            assert await asyncio.wait_for(task, 15) is True
            assert (await fetch(observer, schema, parent))["status"] == "cancelled"
            for kid in got[0][2]:
                assert (await fetch(observer, schema, kid))["status"] == "cancelled"


async def test_a_parent_cancelled_first_schedules_no_children(make_engine) -> None:
    """§27.2, the cancel commits first: the parent's ScheduleChilds finds its claim
    gone and inserts nothing."""
    async with make_engine(queues={}) as client:
        schema, q = client.config.schema, client.queries
        conn = await connect(client.config.dsn)
        async with conn:
            (parent,) = await insert(conn, q, {"fsm": "tests.Parent"})
            await claim_one(conn, q, "node-p:1")
            assert await client.cancel(parent)
            kids = rows(*({"fsm": "tests.Child", "parent_id": parent},) * 3)
            assert await schedule(conn, q, parent, "node-p:1", kids) == []
            assert await client.list(parent=parent) == []
            assert (await fetch(conn, schema, parent))["status"] == "cancelled"


async def test_a_cancel_that_deadlocks_with_a_childs_commit_runs_again(make_engine) -> None:
    """Cancel locks parent then child; a child's terminal commit locks child then
    parent. Forced here: PostgreSQL aborts the cancel's transaction, which runs again
    once the child's commit is through, and still cancels the whole tree."""
    async with make_engine(queues={}) as client:
        schema, q = client.config.schema, client.queries
        observer = await connect(client.config.dsn)
        holder = await connect(client.config.dsn, autocommit=False)
        async with observer, holder:
            parent, kids = await fan_out(observer, q, 2)
            table = f'"{schema}".gen_durable'
            # The cancel's backend must be the one that finds the cycle (the victim).
            await holder.execute("SET deadlock_timeout = '30s'")
            await holder.execute(f"UPDATE {table} SET updated_at = now() WHERE id = %s", (kids[0],))
            task = asyncio.create_task(client.cancel(parent, "deadlock"))
            await wait_lock_waiters(observer, schema)  # the cancel holds the parent
            closing = asyncio.create_task(
                holder.execute(f"UPDATE {table} SET updated_at = now() WHERE id = %s", (parent,))
            )
            await asyncio.wait_for(closing, 15)  # the cancel was the deadlock's victim
            await holder.commit()
            assert await asyncio.wait_for(task, 15) is True
            for iid in (parent, *kids):
                assert (await fetch(observer, schema, iid))["status"] == "cancelled"
