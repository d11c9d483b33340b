"""``drain`` fires await deadlines through the timer's own statement (SPEC §19, §24)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gen_durable as gd
from gen_durable.testing import drain


class DayLong(gd.FSM):
    """Waits a day for approval; reports how the wait ended."""

    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        if ctx.timed_out or ctx.awaited:
            return gd.Done({"timed_out": ctx.timed_out, "awaited": [s.name for s in ctx.awaited]})
        return gd.Await(["approved", "rejected"], ctx.state, timeout=86_400)


async def test_a_day_long_wait_times_out_without_waiting(
    make_engine: Callable[..., gd.Engine],
) -> None:
    engine = make_engine(queues={})
    async with engine:
        waiting = await engine.insert(DayLong)
        answered = await engine.insert(DayLong)
        parked = await drain(engine, with_timeouts=False)
        assert parked.kinds["await"] == 2
        assert (await engine.get(waiting)).status == "awaiting_signal"  # type: ignore[union-attr]
        assert await engine.signal(answered, "approved") is True
        await drain(engine)
        got = {i: await engine.get(i) for i in (waiting, answered)}
    assert got[waiting] is not None and got[waiting].result == {"timed_out": True, "awaited": []}
    assert got[answered] is not None
    assert got[answered].result == {"timed_out": False, "awaited": ["approved"]}


async def test_fire_await_deadlines_counts_what_it_fired(
    make_engine: Callable[..., gd.Engine],
) -> None:
    engine = make_engine(queues={})
    async with engine:
        for _ in range(3):
            await engine.insert(DayLong)
        await drain(engine, with_timeouts=False)
        assert await gd.testing.fire_await_deadlines(engine) == 3
        assert await gd.testing.fire_await_deadlines(engine) == 0
