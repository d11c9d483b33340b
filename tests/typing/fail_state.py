"""A wrong state type is refused."""

from __future__ import annotations

import gen_durable as gd


class OrderState(gd.State):
    sku: str


class Other(gd.State):
    n: int = 0


class Order(gd.FSM[OrderState]):
    @gd.step
    def start(self, ctx: gd.Context[OrderState]) -> gd.Outcome[OrderState]:
        n: int = ctx.state.sku  # E: Incompatible types in assignment
        return gd.Done(n)


class Dispatch(gd.FSM[OrderState]):
    def step(self, step: str, ctx: gd.Context[Other]) -> gd.Outcome:  # E: with supertype
        return gd.Done()


async def insert(engine: gd.Engine) -> None:
    await engine.insert(Order, state=Other())  # E: Cannot infer value of type parameter
    gd.Spec(Order, state=5)  # E: Cannot infer value of type parameter
