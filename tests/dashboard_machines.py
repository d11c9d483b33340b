"""Machines the dashboard tests run: a parent with children, one awaiting a signal."""

from __future__ import annotations

import gen_durable as gd


class Waiter(gd.FSM):
    """Parks until a ``go`` signal arrives, then finishes with its payload."""

    class State(gd.State):
        note: str = ""

    async def step(self, step: str, ctx: gd.Context[Waiter.State]) -> gd.Outcome:
        go = [s for s in ctx.signals if s.name == "go"]
        if not go:
            return gd.Await("go", ctx.state)
        return gd.Done({"payload": go[0].payload})


class Family(gd.FSM):
    """Spawns two waiting children and joins them."""

    class State(gd.State):
        note: str = ""

    async def step(self, step: str, ctx: gd.Context[Family.State]) -> gd.Outcome:
        if step == "start":
            kids = [gd.Spec(Waiter, state={"note": f"kid {i}"}) for i in range(2)]
            return gd.ScheduleChilds("joined", kids)
        return gd.Done({"kids": len(ctx.childs)})


class Broken(gd.Job, max_attempts=1):
    def perform(self, args: dict[str, str]) -> None:
        raise RuntimeError(args.get("why", "broken"))
