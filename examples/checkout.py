"""Orders that wait for a payment signal.

    python examples/checkout.py

Four orders show the signal rules: a payment webhook delivered twice (stored once
thanks to its ``dedup_key``), a payment that arrives before the order even starts, an
order paid in two instalments (it re-awaits after the first), and an order that is
never paid and stays parked — durably, costing nothing but its row.
"""

from __future__ import annotations

import asyncio

from _support import database, wait_for_status

import gen_durable as gd


class Order(gd.FSM, name="examples.checkout.order", queue="orders"):
    class State(gd.State):
        order_id: int
        amount_cents: int
        paid_cents: int = 0
        counted: list[int] = []  # ids of the payment signals already added up

    async def step(self, step: str, ctx: gd.Context[Order.State]) -> gd.Outcome:
        state = ctx.state
        match step:
            case "start":
                # Reserve the stock here. Like every step, this may run twice after a
                # crash, so the reservation must be idempotent (keyed by order_id).
                return gd.Next("await_payment", state)
            case "await_payment":
                new = [s for s in ctx.signals if s.name == "payment" and s.id not in state.counted]
                state = state.model_copy(
                    update={
                        "paid_cents": state.paid_cents
                        + sum(s.payload["amount_cents"] for s in new),
                        "counted": [*state.counted, *(s.id for s in new)],
                    }
                )
                if state.paid_cents < state.amount_cents:
                    return gd.Await("payment", state)  # parks until a new payment arrives
                return gd.Next("ship", state)
            case "ship":
                return gd.Done({"order": state.order_id, "paid_cents": state.paid_cents})
        return gd.Stop(f"unknown step {step!r}")


async def main(dsn: str) -> None:
    async with gd.Engine(dsn, queues={}) as client:
        # Paid before the order is even picked up: the payment waits in the inbox.
        early = await client.insert(Order, state={"order_id": 2, "amount_cents": 500})
        await client.signal(early, "payment", {"amount_cents": 500}, dedup_key="psp-2")

    async with gd.Engine(dsn, queues={"orders": 4}) as engine:
        webhook = await engine.insert(Order, state={"order_id": 1, "amount_cents": 1999})
        instalments = await engine.insert(Order, state={"order_id": 3, "amount_cents": 3000})
        unpaid = await engine.insert(Order, state={"order_id": 4, "amount_cents": 100})
        for order in (webhook, instalments, unpaid):
            await wait_for_status(engine, order, "awaiting_signal")

        for _ in range(2):  # the payment provider retries its webhook
            await engine.signal(webhook, "payment", {"amount_cents": 1999}, dedup_key="psp-1")

        await engine.signal(instalments, "payment", {"amount_cents": 1000}, dedup_key="psp-3a")
        await wait_for_status(engine, instalments, "awaiting_signal")  # woke, re-awaited
        await engine.signal(instalments, "payment", {"amount_cents": 2000}, dedup_key="psp-3b")

        print(f"{'order':>5}  {'status':<16} result")
        for order in (webhook, early, instalments, unpaid):
            final = await wait_for_status(engine, order, "done", "failed", "awaiting_signal")
            if order != unpaid:
                final = await wait_for_status(engine, order, "done", "failed")
            print(f"{final.state['order_id']:>5}  {final.status:<16} {final.result}")

        rows = {order: await engine.get(order) for order in (webhook, early, instalments, unpaid)}
        assert all(row is not None for row in rows.values())
        assert getattr(rows[webhook], "result", None) == {"order": 1, "paid_cents": 1999}
        assert getattr(rows[early], "result", None) == {"order": 2, "paid_cents": 500}
        assert getattr(rows[instalments], "result", None) == {"order": 3, "paid_cents": 3000}
        assert getattr(rows[unpaid], "status", None) == "awaiting_signal"
    print("checkout: ok")


if __name__ == "__main__":
    asyncio.run(main(database()))
