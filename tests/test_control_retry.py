"""Retry (SPEC §21, §27.3) on real PostgreSQL: failed and cancelled instances, and the
barrier accounting of a retried child — counted once while its parent waits, detached
once the parent moved on."""

from __future__ import annotations

import asyncio
from typing import Any

import pydantic
import pytest

import gen_durable as gd

from .conftest import wait_for
from .sqlhelp import claim, complete, connect, fan_out, fetch, insert, wait_lock_waiters
from .test_engine_basics import finished

RUNS: dict[str, int] = {}


class Flaky(gd.FSM):
    class State(gd.State):
        ok: bool = False

    async def step(self, step: str, ctx: gd.Context[Flaky.State]) -> gd.Outcome:
        RUNS[step] = RUNS.get(step, 0) + 1
        if not ctx.state.ok:
            return gd.Stop("not ok yet")
        return gd.Done({"step": step, "attempt": ctx.attempt})


class Sleeper(gd.FSM):
    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        return gd.Await("never", ctx.state)


class Joiner(gd.FSM):
    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        if step == "start":
            return gd.ScheduleChilds("join", [Sleeper], ctx.state)
        RUNS["join"] = RUNS.get("join", 0) + 1
        return gd.Done([c.status for c in ctx.childs])


async def test_retry_a_failed_instance_with_a_new_state_and_step(make_engine) -> None:
    RUNS.clear()
    async with make_engine(queues={"default": 2}) as engine:
        iid = await engine.insert(Flaky)
        assert (await finished(engine, iid)).status == "failed"
        assert await engine.retry(iid) is True  # same state: fails again
        assert (await finished(engine, iid)).status == "failed"
        with pytest.raises(pydantic.ValidationError):
            await engine.retry(iid, state={"ok": "not a bool"})
        assert (await engine.get(iid)).status == "failed"  # type: ignore[union-attr]
        assert await engine.retry(iid, step="other", state={"ok": True}) is True
        inst = await finished(engine, iid)
        assert inst.status == "done" and inst.result == {"step": "other", "attempt": 0}
        assert await engine.retry(iid) is False  # done is not retried
        with pytest.raises(gd.NoSuchInstance):
            await engine.retry(iid + 1000)
    assert RUNS == {"start": 2, "other": 1}


async def test_retry_of_a_live_instance_is_refused(make_engine) -> None:
    async with make_engine(queues={}) as client:
        iid = await client.insert(Flaky)
        assert await client.retry(iid) is False
        assert (await client.get(iid)).status == "runnable"  # type: ignore[union-attr]


async def test_retry_a_cancelled_parent_wakes_its_join_once(make_engine) -> None:
    RUNS.clear()
    async with make_engine(queues={"default": 4}) as engine:
        parent = await engine.insert(Joiner)

        async def child_parked() -> bool:
            return bool(await engine.list(machine=Sleeper, status="awaiting_signal"))

        await wait_for(child_parked, 15)
        assert await engine.cancel(parent, "pause the tree")
        assert {i.status for i in await engine.list(parent=parent)} == {"cancelled"}
        assert await engine.retry(parent) is True
        inst = await finished(engine, parent)
        assert inst.status == "done" and inst.result == ["cancelled"]
        assert inst.step == "join" and RUNS["join"] == 1
        (child,) = await engine.list(parent=parent)
        assert child.status == "cancelled"


async def test_retried_child_is_counted_once_while_the_parent_waits(make_engine) -> None:
    async with make_engine(queues={}) as client:
        schema, q = client.config.schema, client.queries
        conn = await connect(client.config.dsn)
        async with conn:
            parent, (a, b) = await fan_out(conn, q, 2)
            await claim(conn, q, "node-c:1", limit=2)
            await complete(conn, q, id=a, token="node-c:1", kind="stop", error="boom")
            assert (await fetch(conn, schema, parent))["children_pending"] == 1
            assert await client.retry(a) is True
            row = await fetch(conn, schema, parent)
            assert row["status"] == "awaiting_children" and row["children_pending"] == 2
            assert not (await fetch(conn, schema, a))["detached"]
            await complete(conn, q, id=b, token="node-c:1", kind="done")
            assert (await fetch(conn, schema, parent))["status"] == "awaiting_children"
            await claim(conn, q, "node-c:2", limit=1)
            await complete(conn, q, id=a, token="node-c:2", kind="done")
            row = await fetch(conn, schema, parent)
            assert row["status"] == "runnable" and row["children_pending"] == 0


async def test_retried_child_of_a_parent_that_moved_on_runs_detached(make_engine) -> None:
    async with make_engine(queues={}) as client:
        schema, q = client.config.schema, client.queries
        conn = await connect(client.config.dsn)
        async with conn:
            parent, (a,) = await fan_out(conn, q, 1)
            await claim(conn, q, "node-c:1", limit=1)
            await complete(conn, q, id=a, token="node-c:1", kind="stop", error="boom")
            assert (await fetch(conn, schema, parent))["status"] == "runnable"  # moved on
            assert await client.retry(a) is True
            assert (await fetch(conn, schema, a))["detached"] is True
            assert (await fetch(conn, schema, parent))["children_pending"] == 0
            # The parent then parks on a new barrier: the detached child must not
            # release it.
            await conn.execute(
                f"UPDATE \"{schema}\".gen_durable SET status = 'awaiting_children', "
                "children_pending = 1, locked_by = NULL, lease_expires_at = NULL "
                "WHERE id = %s",
                (parent,),
            )
            (other,) = await insert(conn, q, {"fsm": "tests.Child", "parent_id": parent})
            got = await claim(conn, q, "node-c:3", limit=2)
            assert {r[0] for r in got} == {a, other}
            await complete(conn, q, id=a, token="node-c:3", kind="done")
            row = await fetch(conn, schema, parent)
            assert row["status"] == "awaiting_children" and row["children_pending"] == 1
            await complete(conn, q, id=other, token="node-c:3", kind="done")
            row = await fetch(conn, schema, parent)
            assert row["status"] == "runnable" and row["children_pending"] == 0


async def test_retry_racing_a_siblings_end_counts_the_child_once(make_engine) -> None:
    """§27.3 forced: a sibling's terminal commit holds the parent's lock while the
    retry of a failed child waits for it; the retry then sees the barrier as the
    sibling left it."""
    async with make_engine(queues={}) as client:
        schema, q = client.config.schema, client.queries
        observer = await connect(client.config.dsn)
        holder = await connect(client.config.dsn, autocommit=False)
        async with observer, holder:
            parent, (a, b, c) = await fan_out(observer, q, 3)
            await claim(observer, q, "node-c:1", limit=3)
            await complete(observer, q, id=a, token="node-c:1", kind="stop", error="boom")
            await complete(holder, q, id=b, token="node-c:1", kind="done")  # open
            task = asyncio.create_task(client.retry(a))
            await wait_lock_waiters(observer, schema)
            await holder.commit()
            assert await asyncio.wait_for(task, 15) is True
            row = await fetch(observer, schema, parent)
            assert row["status"] == "awaiting_children" and row["children_pending"] == 2
            await complete(observer, q, id=c, token="node-c:1", kind="done")
            assert (await fetch(observer, schema, parent))["status"] == "awaiting_children"
            await claim(observer, q, "node-c:2", limit=1)
            await complete(observer, q, id=a, token="node-c:2", kind="done")
            row = await fetch(observer, schema, parent)
            assert row["status"] == "runnable" and row["children_pending"] == 0


class HKid(gd.FSM):
    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        await asyncio.sleep(0.005 * (ctx.id % 3))
        return gd.Stop("always")


class HParent(gd.FSM):
    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        if step == "start":
            return gd.ScheduleChilds("join", [HKid] * 12, ctx.state)
        RUNS["hjoin"] = RUNS.get("hjoin", 0) + 1
        return gd.Done(sorted(c.status for c in ctx.childs))


async def test_retries_hammering_a_live_barrier_wake_the_parent_exactly_once(make_engine):
    """Children fail and are retried (twice each, as fast as the client can) while
    their siblings end on the node: the barrier counts every retried child once more
    only while the parent still waits, and the parent joins exactly once."""
    RUNS.clear()
    retried: dict[int, int] = {}
    async with make_engine(queues={"default": 6}) as engine:
        parent = await engine.insert(HParent)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while (inst := await engine.get(parent)) is not None and not inst.terminal:
            assert loop.time() < deadline, "the parent never finished"
            for kid in await engine.list(parent=parent, status="failed"):
                if retried.get(kid.id, 0) < 2 and await engine.retry(kid.id):
                    retried[kid.id] = retried.get(kid.id, 0) + 1
            await asyncio.sleep(0.01)
        assert inst is not None and inst.status == "done" and RUNS["hjoin"] == 1
        assert inst.children_pending == 0
        kids = await engine.list(parent=parent)
        assert len(kids) == 12 and sum(retried.values()) > 0

        async def all_ended() -> bool:
            return all(k.terminal for k in await engine.list(parent=parent))

        await wait_for(all_ended, 30)  # detached retries finish on their own
        assert (await engine.get(parent)).children_pending == 0  # type: ignore[union-attr]
        assert RUNS["hjoin"] == 1


async def test_cancel_and_retry_take_keys(make_engine) -> None:
    RUNS.clear()
    async with make_engine(queues={}) as engine:
        iid = await engine.insert(Sleeper, unique_key="order-9")
        assert await engine.cancel("order-9", "by key") is True
        assert (await engine.get(iid)).status == "cancelled"  # type: ignore[union-attr]
        # No occupant any more: the row get(key) returns is the one acted on.
        assert await engine.retry(b"order-9") is True
        assert (await engine.get(iid)).status == "runnable"  # type: ignore[union-attr]
        with pytest.raises(gd.NoSuchInstance):
            await engine.cancel("never-used")
        with pytest.raises(gd.ConfigurationError):
            await engine.retry(1.5)  # type: ignore[arg-type]
