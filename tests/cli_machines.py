"""Machines the CLI tests load into a ``gen-durable worker`` subprocess via ``--app``."""

from __future__ import annotations

import asyncio

import gen_durable as gd


class Greeter(gd.FSM):
    """Waits for a ``go`` signal, then finishes with a greeting built from its state."""

    class State(gd.State):
        name: str

    async def step(self, step: str, ctx: gd.Context[Greeter.State]) -> gd.Outcome:
        if not any(s.name == "go" for s in ctx.signals):
            return gd.Await("go", ctx.state)
        return gd.Done({"greeting": f"hello {ctx.state.name}"})


class Slow(gd.Job):
    """Runs for ``args["seconds"]``: a step still in flight when the worker is stopped."""

    async def perform(self, args: dict[str, float]) -> str:
        await asyncio.sleep(args["seconds"])
        return "finished"


class Echo(gd.Job):
    def perform(self, args: dict[str, object]) -> dict[str, object]:
        return args


class Mailer(gd.Job, queue="mail"):
    """On a queue of its own: a worker without --queue must serve it too."""

    def perform(self, args: dict[str, object]) -> str:
        return "sent"


class Tick(gd.Job):
    """The job of the schedules a worker is given with ``--schedules``."""

    def perform(self, args: dict[str, object]) -> str:
        return "tick"


EVERY_SECOND = [gd.Schedule("cli-every-second", Tick, "* * * * * *")]
NOT_SCHEDULES = ["nightly"]
