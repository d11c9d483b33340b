"""A misspelt option is refused."""

from __future__ import annotations

import gen_durable as gd


class Order(gd.FSM):
    @gd.step
    def start(self, ctx: gd.Context) -> gd.Outcome:
        return gd.Next(Order.start, ctx.state, dealy=5)  # E: Unexpected keyword argument "dealy"


async def insert(engine: gd.Engine, client: gd.SyncClient) -> None:
    await engine.insert(Order, stat={})  # E: Unexpected keyword argument "stat"
    client.insert(Order, priorty=1)  # E: Unexpected keyword argument "priorty"
    gd.Spec(Order, partition="k")  # E: Unexpected keyword argument "partition"
