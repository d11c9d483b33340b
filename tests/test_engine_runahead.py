"""Run-ahead: a Next chain continuing on its claim without a new pick."""

from __future__ import annotations

import asyncio
from typing import Any

import gen_durable as gd

from .conftest import wait_for
from .test_engine_basics import finished

SEEN: list[tuple[str, list[str]]] = []
GATES: dict[str, asyncio.Event] = {}


class Steps(gd.FSM):
    class State(gd.State):
        n: int = 0

    async def step(self, step: str, ctx: gd.Context[Steps.State]) -> gd.Outcome:
        if ctx.state.n < 4:
            return gd.Next("s", ctx.state.model_copy(update={"n": ctx.state.n + 1}))
        return gd.Done(ctx.state.n)


async def test_chain_runs_ahead_on_one_claim(make_engine) -> None:
    async with make_engine(queues={}) as client:
        ids = await client.insert_all([Steps] * 10)
    engine = make_engine(queues={"default": 10}, heartbeat_interval=9)
    async with engine:
        for i in ids:
            assert (await finished(engine, i)).result == 4
        s = engine.stats.snapshot()
    assert s["steps"] == 50
    # One claim per instance: the four Next steps did not go back through the queue.
    assert s["picked"] == 10


async def test_run_ahead_can_be_turned_off(make_engine) -> None:
    async with make_engine(queues={}) as client:
        ids = await client.insert_all([Steps] * 3)
    engine = make_engine(queues={"default": 3}, run_ahead=0)
    async with engine:
        for i in ids:
            await finished(engine, i)
    assert engine.stats.picked == 15


async def test_partitioned_rows_do_not_run_ahead(make_engine) -> None:
    async with make_engine(queues={}) as client:
        ids = await client.insert_all([gd.Spec(Steps, partition_key=f"k{i}") for i in range(3)])
    engine = make_engine(queues={"default": 3})
    async with engine:
        for i in ids:
            await finished(engine, i)
    # Each step went back to the queue so other instances of the key get their turn.
    assert engine.stats.picked == 15


class Listener(gd.FSM):
    """Step a parks on nothing; while it runs, the test sends signals. The run-ahead
    step b must see the ones the previous step did not consume."""

    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        SEEN.append((step, [s.name for s in ctx.signals]))
        if step == "start":
            if not any(s.name == "go" for s in ctx.signals):
                return gd.Await("go", ctx.state)
            return gd.Next("a", ctx.state)
        if step == "a":
            await GATES["a"].wait()
            return gd.Next("b", ctx.state)
        return gd.Done([s.name for s in ctx.signals])


async def test_run_ahead_step_sees_a_fresh_inbox(make_engine) -> None:
    SEEN.clear()
    GATES["a"] = asyncio.Event()
    async with make_engine() as engine:
        iid = await engine.insert(Listener)
        await wait_for(lambda: asyncio.sleep(0, bool(SEEN)))
        await engine.signal(iid, "go")
        await wait_for(lambda: asyncio.sleep(0, any(s == "a" for s, _ in SEEN)))
        # Arrives while step "a" runs on the claim.
        await engine.signal(iid, "late")
        GATES["a"].set()
        inst = await finished(engine, iid)
    # "go" was consumed by step "start"'s progressing outcome; "late" is fresh.
    assert SEEN[-1] == ("b", ["late"])
    assert inst.result == ["late"]
    assert engine.stats.picked == 2  # the start pick, and the wake-up after Await


ORDER: list[str] = []


class Urgent(gd.FSM):
    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        ORDER.append(f"{ctx.state['name']}:{step}")
        if step == "start" and ctx.state["name"] == "slow":
            await GATES["urgent"].wait()
            return gd.Next("more", ctx.state)
        if step == "more":
            return gd.Next("end", ctx.state)
        return gd.Done()


async def test_a_more_urgent_buffered_row_is_not_kept_waiting_by_a_chain(make_engine) -> None:
    ORDER.clear()
    GATES["urgent"] = asyncio.Event()
    async with make_engine(queues={"default": 1}, prefetch=5) as engine:
        slow = await engine.insert(Urgent, state={"name": "slow"}, priority=5)
        await wait_for(lambda: asyncio.sleep(0, ORDER == ["slow:start"]))
        urgent = await engine.insert(Urgent, state={"name": "urgent"}, priority=0)

        async def buffered() -> bool:
            inst = await engine.get(urgent)
            return inst is not None and inst.status == "executing"

        await wait_for(buffered)  # claimed into the buffer behind the running chain
        GATES["urgent"].set()
        await finished(engine, slow)
        await finished(engine, urgent)
    # The chain gave its slot to the more urgent row before running on.
    assert ORDER == ["slow:start", "urgent:start", "slow:more", "slow:end"]
