"""Errors you can read (SPEC §4, §5, §15): ``last_error`` names the exception's type."""

from __future__ import annotations

from typing import Any

import gen_durable as gd

from .test_engine_basics import finished


class Lookup(gd.FSM):
    """The default handle: Stop(error)."""

    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        if "customer_id" not in ctx.state and "reason" in ctx.state:
            return gd.Stop(ctx.state["reason"])
        if ctx.state.get("bare"):
            raise RuntimeError
        return gd.Done(ctx.state["customer_id"])


class OutOfTries(gd.Job, max_attempts=1):
    def perform(self, args: dict[str, Any]) -> None:
        raise KeyError("customer_id")


async def test_last_error_carries_the_type_and_message(make_engine) -> None:
    async with make_engine() as engine:
        ids = [
            await engine.insert(Lookup),
            await engine.insert(Lookup, state={"bare": True}),
            await engine.insert(Lookup, state={"reason": "customer gone"}),
            await engine.insert(Lookup, state={"reason": ["not", "a", "str"]}),
            await engine.insert(OutOfTries),
        ]
        got = [(await finished(engine, i)).last_error for i in ids]
    assert got == [
        "KeyError: 'customer_id'",
        "RuntimeError",  # no message: the type alone
        "customer gone",  # a plain reason stays verbatim
        "['not', 'a', 'str']",
        "KeyError: 'customer_id'",  # a job out of attempts
    ]
