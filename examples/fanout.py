"""Fan-out and join: an order is packed by one child instance per item.

    python examples/fanout.py

Each ``Fulfil`` parent schedules a ``Pack`` child per item and parks until all of them
have finished. Packing one fragile item fails; the barrier waits for termination, not
success, so the parent wakes up anyway, reads every child's outcome in ``ctx.childs``
and decides: ship what was packed and refund the rest. An order with no items has
nothing to wait for and goes straight on.
"""

from __future__ import annotations

import asyncio

from _support import database, wait_for_status

import gen_durable as gd


class Pack(gd.FSM, name="examples.fanout.pack", queue="warehouse"):
    class State(gd.State):
        sku: str
        cents: int

    async def step(self, step: str, ctx: gd.Context[Pack.State]) -> gd.Outcome:
        await asyncio.sleep(0.02)  # the packing station at work
        if ctx.state.sku.startswith("FRAGILE"):
            return gd.Stop("out of bubble wrap")
        return gd.Done({"sku": ctx.state.sku})


class Fulfil(gd.FSM, name="examples.fanout.fulfil"):
    class State(gd.State):
        order_id: int
        items: dict[str, int]  # sku -> price in cents
        refund_cents: int = 0

    async def step(self, step: str, ctx: gd.Context[Fulfil.State]) -> gd.Outcome:
        state = ctx.state
        match step:
            case "start":
                children = [
                    gd.Spec(Pack, state={"sku": sku, "cents": cents})
                    for sku, cents in state.items.items()
                ]
                return gd.ScheduleChilds("decide", children, state)
            case "decide":
                failed = [c for c in ctx.childs if c.status == "failed"]
                refund = sum(c.state["cents"] for c in failed)
                state = state.model_copy(update={"refund_cents": refund})
                return gd.Next("refund" if failed else "ship", state)
            case "refund":
                # Call the payment provider with an idempotency key here.
                return gd.Next("ship", state)
            case "ship":
                shipped = sorted(c.result["sku"] for c in ctx.childs if c.status == "done")
                return gd.Done({"shipped": shipped, "refunded_cents": state.refund_cents})
        return gd.Stop(f"unknown step {step!r}")


async def main(dsn: str) -> None:
    orders = {
        1: {"BOOK-1": 1200, "MUG-7": 800},
        2: {"BOOK-2": 1500, "FRAGILE-VASE": 4200, "CARD-3": 300},
        3: {},
    }
    async with gd.Engine(dsn, queues={"default": 4, "warehouse": 4}) as engine:
        ids = {
            n: await engine.insert(Fulfil, state={"order_id": n, "items": items})
            for n, items in orders.items()
        }
        results = {n: await wait_for_status(engine, i, "done", "failed") for n, i in ids.items()}
        for n, inst in results.items():
            children = await engine.children(inst.id)
            statuses = ", ".join(f"{c.state['sku']}={c.status}" for c in children) or "no children"
            print(f"order {n}: {inst.status} {inst.result}  [{statuses}]")

    assert results[1].result == {"shipped": ["BOOK-1", "MUG-7"], "refunded_cents": 0}
    assert results[2].result == {"shipped": ["BOOK-2", "CARD-3"], "refunded_cents": 4200}
    assert results[3].result == {"shipped": [], "refunded_cents": 0}
    print("fanout: ok")


if __name__ == "__main__":
    asyncio.run(main(database()))
