"""Correct code: typed state flows to ctx.state, outcomes and insert."""

from __future__ import annotations

from typing import Any

import gen_durable as gd


class OrderState(gd.State):
    sku: str
    paid: bool = False


class Order(gd.FSM[OrderState], initial="pay"):
    @gd.step
    async def pay(self, ctx: gd.Context[OrderState]) -> gd.Outcome[OrderState]:
        sku: str = ctx.state.sku
        if not sku:
            return gd.Stop("no sku")
        if not ctx.signals:
            return gd.Await("paid", ctx.state)
        return gd.Next(Order.ship, ctx.state.model_copy(update={"paid": True}))

    @gd.step
    def ship(self, ctx: gd.Context[OrderState]) -> gd.Outcome[OrderState]:
        if ctx.attempt < 3 and not ctx.state.paid:
            return gd.Replay(ctx.state, delay=1.0)
        return gd.Next("done", delay=60)

    @gd.step
    def done(self, ctx: gd.Context[OrderState]) -> gd.Outcome[OrderState]:
        return gd.Done({"sku": ctx.state.sku})


class Legacy(gd.FSM):
    """The dispatcher form with a nested State keeps working, untyped names and all."""

    class State(gd.State):
        n: int = 0

    async def step(self, step: str, ctx: gd.Context[Legacy.State]) -> gd.Outcome:
        return gd.Next("start", ctx.state) if ctx.state.n < 3 else gd.Done(ctx.state.n)


class Dispatch(gd.FSM[OrderState]):
    def step(self, step: str, ctx: gd.Context[OrderState]) -> gd.Outcome[OrderState]:
        return gd.Done(ctx.state.sku)


class Email(gd.Job[dict[str, str]]):
    def perform(self, args: dict[str, str]) -> str:
        return args["to"]


async def client(engine: gd.Engine, sync: gd.SyncClient) -> list[int]:
    a = await engine.insert(Order, state=OrderState(sku="A1"), priority=1)
    b = await engine.insert(Order, state={"sku": "B2"}, step=Order.ship, unique_key="b")
    c = await engine.insert(Legacy, state={"n": 1}, queue="default", schedule_in=5)
    d = sync.insert(Email, args={"to": "ada@example.com"}, partition_key="ada")
    spec = gd.Spec(Order, state=OrderState(sku="C3"), unique_scope=["runnable"])
    more: list[Any] = await engine.insert_all([spec, Email])
    return [a, b, c, d, *more]
