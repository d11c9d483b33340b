"""``gen_durable.testing``: drain through the real SQL, run_step as pure code (SPEC §24)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

import gen_durable as gd
from gen_durable.testing import DrainLimitExceeded, drain, run_step


class Leaf(gd.Job, queue="leaves"):
    def perform(self, args: dict[str, Any]) -> int:
        return int(args["n"]) * 10


class Branch(gd.FSM, initial="fan", queue="branches"):
    @gd.step
    def fan(self, ctx: gd.Context) -> gd.Outcome:
        leaves = [gd.Spec(Leaf, args={"n": ctx.state["n"] * 2 + i}) for i in range(2)]
        return gd.ScheduleChilds(Branch.joined, leaves, ctx.state)

    @gd.step
    def joined(self, ctx: gd.Context) -> gd.Outcome:
        return gd.Done(sum(c.result for c in ctx.childs))


class Root(gd.FSM, initial="fan"):
    @gd.step
    async def fan(self, ctx: gd.Context) -> gd.Outcome:
        branches = [gd.Spec(Branch, state={"n": i}) for i in range(3)]
        return gd.ScheduleChilds(Root.joined, branches, ctx.state)

    @gd.step
    async def joined(self, ctx: gd.Context) -> gd.Outcome:
        return gd.Done(sorted(c.result for c in ctx.childs))


async def test_three_level_tree_runs_to_the_end_on_a_pure_client(
    make_engine: Callable[..., gd.Engine],
) -> None:
    # queues={} runs nothing itself; the drain serves every queue of the schema
    # ("default", "branches", "leaves").
    engine = make_engine(queues={})
    async with engine:
        root = await engine.insert(Root)
        result = await drain(engine)
        row = await engine.get(root)
        children = await engine.children(root)
    assert row is not None and row.status == "done"
    # Branch i sums leaves (2i)*10 and (2i+1)*10.
    assert row.result == [10, 50, 90]
    assert [c.status for c in children] == ["done"] * 3
    assert result["schedule_childs"] == 4 and result["done"] == 1 + 3 + 6
    assert result.steps == 14


class Sleeper(gd.FSM):
    @gd.step
    def start(self, ctx: gd.Context) -> gd.Outcome:
        return gd.Next(Sleeper.woke, {"slept": True}, delay=3600)

    @gd.step
    def woke(self, ctx: gd.Context) -> gd.Outcome:
        return gd.Done(ctx.state)


async def test_a_durable_sleep_of_an_hour_runs_without_waiting(
    make_engine: Callable[..., gd.Engine],
) -> None:
    engine = make_engine(queues={})
    async with engine:
        order = await engine.insert(Sleeper)
        started = time.monotonic()
        kept = await drain(engine, with_scheduled=False)
        held = await engine.get(order)
        result = await drain(engine)
        row = await engine.get(order)
    # Without with_scheduled the delayed row is left for later...
    assert kept.steps == 1 and held is not None
    assert held.status == "runnable" and held.step == "woke"
    # ...with it (the default), the hour is collapsed.
    assert result.steps == 1 and row is not None and row.status == "done"
    assert row.result == {"slept": True}
    assert time.monotonic() - started < 30


class Forever(gd.FSM):
    @gd.step
    def start(self, ctx: gd.Context) -> gd.Outcome:
        return gd.Next(Forever.start, {"n": ctx.state.get("n", 0) + 1})


async def test_max_steps_stops_an_endless_machine_with_a_clear_error(
    make_engine: Callable[..., gd.Engine],
) -> None:
    engine = make_engine(queues={})
    async with engine:
        order = await engine.insert(Forever)
        with pytest.raises(DrainLimitExceeded, match="max_steps=25") as caught:
            await drain(engine, max_steps=25)
        row = await engine.get(order)
        # The claim it held is handed back: the row can run again.
        assert row is not None and row.status == "runnable"
        assert row.state == {"n": 25}
        with pytest.raises(DrainLimitExceeded):
            await drain(engine, max_steps=3)
    assert caught.value.result.steps == 25
    assert caught.value.result["next"] == 25
    assert "Forever" in str(caught.value)


class Flaky(gd.Job, max_attempts=4):
    def perform(self, args: dict[str, Any], ctx: gd.Context) -> str:
        if ctx.attempt < 2:
            raise RuntimeError(f"flaked on attempt {ctx.attempt}")
        return f"ok on attempt {ctx.attempt}"

    def backoff(self, attempt: int) -> float:
        return 600.0  # ten minutes a retry: only collapsed time makes this test fast


async def test_a_failing_step_retries_with_its_backoff_collapsed(
    make_engine: Callable[..., gd.Engine],
) -> None:
    engine = make_engine(queues={})
    async with engine:
        job = await engine.insert(Flaky)
        started = time.monotonic()
        result = await drain(engine)
        row = await engine.get(job)
    assert row is not None and row.status == "done"
    assert row.result == "ok on attempt 2"
    assert result["replay"] == 2 and result["done"] == 1
    assert [(e["attempt"], e["message"]) for e in row.errors] == [
        (0, "flaked on attempt 0"),
        (1, "flaked on attempt 1"),
    ]
    assert time.monotonic() - started < 30


async def test_drain_refuses_a_bad_max_steps_and_names_a_missing_machine(
    make_engine: Callable[..., gd.Engine], conn: Any
) -> None:
    engine = make_engine(queues={})
    async with engine:
        with pytest.raises(gd.GenDurableError, match="max_steps"):
            await drain(engine, max_steps=0)
        order = await engine.insert(Sleeper)
        schema = engine.config.schema
        await conn.execute(f"UPDATE \"{schema}\".gen_durable SET fsm = 'nowhere.Gone'")
        with pytest.raises(gd.GenDurableError, match=r"nowhere\.Gone"):
            await drain(engine)
        row = await engine.get(order)
    assert row is not None and row.status == "runnable"  # handed back, not lost


class Greeter(gd.FSM[Any]):
    @gd.step
    async def start(self, ctx: gd.Context) -> gd.Outcome:
        names = [s.payload for s in ctx.signals if s.name == "hello"]
        if not names:
            return gd.Await("hello", ctx.state)
        return gd.Next(Greeter.reply, {"names": names, "attempt": ctx.attempt})

    @gd.step
    def reply(self, ctx: gd.Context) -> gd.Outcome:
        return gd.Done(ctx.state)


def test_run_step_runs_one_step_as_pure_code() -> None:
    parked = run_step(Greeter, "start")
    assert parked == gd.Await("hello", {})
    woken = run_step(Greeter, Greeter.start, signals=[("hello", "ada")], attempt=2)
    # The target comes back by name, as the engine stores it.
    assert woken == gd.Next("reply", {"names": ["ada"], "attempt": 2})
    assert run_step(Greeter, "reply", state={"x": 1}) == gd.Done({"x": 1})
    assert run_step(Leaf, state={"n": 4}) == gd.Done(40)
    children = [gd.Child(7, "x", "done", {}, 5, None)]
    assert run_step(Branch, "joined", state={"n": 0}, childs=children) == gd.Done(5)
    with pytest.raises(gd.ConfigurationError, match="no step 'nope'"):
        run_step(Greeter, "nope")
    with pytest.raises(gd.ConfigurationError, match=r"gd\.Child"):
        run_step(Branch, "joined", childs=[{"id": 1}])  # type: ignore[list-item]


async def test_run_step_inside_a_running_loop() -> None:
    woken = run_step(Greeter, "start", signals=[gd.Signal(3, "hello", "bob")])
    assert woken == gd.Next("reply", {"names": ["bob"], "attempt": 0})


STARTED = asyncio.Event()


class Stuck(gd.FSM):
    @gd.step
    async def start(self, ctx: gd.Context) -> gd.Outcome:
        STARTED.set()
        await asyncio.Event().wait()  # never returns: the test cancels the drain
        return gd.Done()


async def test_a_cancelled_drain_hands_its_claims_back(
    make_engine: Callable[..., gd.Engine],
) -> None:
    STARTED.clear()
    engine = make_engine(queues={})
    async with engine:
        ids = [await engine.insert(Stuck) for _ in range(3)]
        task = asyncio.ensure_future(drain(engine))
        await asyncio.wait_for(STARTED.wait(), 30)
        rows = [await engine.get(i) for i in ids]
        assert [r.status for r in rows if r is not None] == ["executing"] * 3
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        rows = [await engine.get(i) for i in ids]
    # The running claim and the two waiting behind it are all runnable again.
    assert [r.status for r in rows if r is not None] == ["runnable"] * 3
