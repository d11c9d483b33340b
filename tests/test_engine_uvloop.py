"""The engine on uvloop (``gen-durable worker --loop uvloop``, and the benchmark's loop):
nothing in it may depend on the standard loop's internals."""

from __future__ import annotations

import asyncio
from typing import Any

import uvloop

import gen_durable as gd

from .conftest import FAST, wait_for


class Relay(gd.FSM, name="uvloop.relay"):
    """A Next (run-ahead), a park on a signal, then Done with what it got."""

    async def step(self, step: str, ctx: gd.Context[Any]) -> gd.Outcome:
        if step == "start":
            return gd.Next("wait", {"n": 1})
        if not ctx.signals:  # parked; the signal re-runs this step
            return gd.Await("go", {"n": ctx.state["n"] + 1})
        got = [s.payload for s in ctx.signals]
        return gd.Done({"n": ctx.state["n"], "got": got})


class Square(gd.Job, name="uvloop.square"):
    def perform(self, args: dict[str, Any]) -> int:  # a sync step: the thread pool
        return int(args["x"]) ** 2


def test_engine_runs_steps_signals_and_sync_jobs_on_uvloop(dsn: str, schema: str) -> None:
    async def scenario() -> tuple[str, list[gd.Instance]]:
        engine = gd.Engine(dsn, schema=schema, queues={"default": 8}, **FAST)
        async with engine:
            relay = await engine.insert(Relay)
            squares = await engine.insert_all([gd.Spec(Square, args={"x": x}) for x in range(5)])

            async def parked() -> bool:
                inst = await engine.get(relay)
                return inst is not None and inst.status == "awaiting_signal"

            await wait_for(parked)
            assert await engine.signal(relay, "go", {"v": 7})
            done = [await engine.wait(i, timeout=15) for i in [relay, *squares]]
        return type(asyncio.get_running_loop()).__module__, done

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        loop_module, done = runner.run(scenario())
    assert loop_module.startswith("uvloop")
    relay, *squares = done
    assert relay.status == "done" and relay.result == {"n": 2, "got": [{"v": 7}]}
    assert [s.result for s in squares] == [0, 1, 4, 9, 16]
