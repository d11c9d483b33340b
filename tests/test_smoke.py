from __future__ import annotations

import gen_durable as gd

from .conftest import wait_for


class Counter(gd.FSM):
    class State(gd.State):
        n: int = 0

    async def step(self, step: str, ctx: gd.Context) -> gd.Outcome:
        if ctx.state.n < 3:
            return gd.Next("start", ctx.state.model_copy(update={"n": ctx.state.n + 1}))
        return gd.Done({"n": ctx.state.n})


async def test_typed_machine_runs_to_done(make_engine) -> None:
    engine = make_engine()
    async with engine:
        iid = await engine.insert(Counter)

        async def done():
            inst = await engine.get(iid)
            return inst if inst.status == "done" else None

        inst = await wait_for(done)
    assert inst.result == {"n": 3}
    assert inst.state == {"n": 3}
