"""The demo's machines: an order with payment, charge, packing and shipping steps, a
packing job per item and a receipt job (see :mod:`gen_durable.demo` for the story)."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import gen_durable as gd

STATUSES = ("runnable", "executing", "awaiting_signal", "awaiting_children", "done", "failed")
OUT_OF_STOCK = "SKU-OUT-OF-STOCK"
PACK_SECONDS = 0.02
PAYMENT_TIMEOUT = 5.0  # seconds an order waits for its payment before it cancels itself


@dataclass
class PartitionWatch:
    """How many packs of one customer ran at the same moment (it must stay 1)."""

    running: Counter[str] = field(default_factory=Counter)
    peak: int = 0
    packs: int = 0

    def enter(self, key: str) -> None:
        self.running[key] += 1
        self.packs += 1
        self.peak = max(self.peak, self.running[key])

    def leave(self, key: str) -> None:
        self.running[key] -= 1

    def reset(self) -> None:
        self.running.clear()
        self.peak = self.packs = 0


WATCH = PartitionWatch()


class Order(gd.FSM, name="demo.Order", queue="orders"):
    class State(gd.State):
        number: int
        customer: str
        items: list[str]
        flaky: int = 0  # times the payment gateway fails before it answers
        parked: bool = False
        payments_seen: int = 0
        charge_attempts: int = 0
        shipped: list[str] = []
        backordered: list[str] = []

    async def step(self, step: str, ctx: gd.Context[Order.State]) -> gd.Outcome:
        s = ctx.state
        match step:
            case "start":
                return gd.Next("await_payment", s)
            case "await_payment":
                paid = [sig for sig in ctx.signals if sig.name == "payment"]
                if not paid and ctx.timed_out:  # the deadline came first (SPEC §19)
                    return gd.Next("cancelled_unpaid", s)
                if not paid:
                    parked = s.model_copy(update={"parked": True})
                    return gd.Await("payment", parked, timeout=PAYMENT_TIMEOUT)
                return gd.Next("charge", s.model_copy(update={"payments_seen": len(paid)}))
            case "charge":
                if ctx.attempt < s.flaky:
                    raise ConnectionError("payment gateway timed out")
                return gd.Next("pack", s.model_copy(update={"charge_attempts": ctx.attempt + 1}))
            case "pack":
                packs = [
                    gd.Spec(
                        Pack,
                        args={"order": s.number, "sku": sku, "customer": s.customer},
                        partition_key=f"customer-{s.customer}",
                    )
                    for sku in s.items
                ]
                return gd.ScheduleChilds("ship", packs, s)
            case "ship":
                packed = [c.state["sku"] for c in ctx.childs if c.status == "done"]
                missing = [c.state["sku"] for c in ctx.childs if c.status == "failed"]
                if not packed:
                    return gd.Stop("nothing could be packed")
                receipt = gd.Spec(SendReceipt, args={"order": s.number, "items": packed})
                update = {"shipped": packed, "backordered": missing}
                return gd.ScheduleChilds("finish", [receipt], s.model_copy(update=update))
            case "cancelled_unpaid":
                return gd.Done({"cancelled": f"no payment within {PAYMENT_TIMEOUT:.0f}s"})
            case "finish":
                return gd.Done(
                    {
                        "shipped": s.shipped,
                        "backordered": s.backordered,
                        "parked": s.parked,
                        "payments_seen": s.payments_seen,
                        "charge_attempts": s.charge_attempts,
                    }
                )
        raise ValueError(f"unknown step {step!r}")

    def handle(self, error: Exception, ctx: gd.Context[Any]) -> gd.Outcome:
        if isinstance(error, ConnectionError) and ctx.attempt < 5:
            return gd.Replay(ctx.state, delay=0.05 * 2**ctx.attempt)
        return gd.Stop(error)


class Pack(gd.Job, name="demo.Pack", queue="packing"):
    async def perform(self, args: dict[str, Any], ctx: gd.Context[Any]) -> dict[str, Any]:
        if args["sku"] == OUT_OF_STOCK:
            raise gd.Cancel(f"{args['sku']} is out of stock")
        key = args["customer"]
        WATCH.enter(key)
        try:
            await asyncio.sleep(PACK_SECONDS)  # the warehouse at work
        finally:
            WATCH.leave(key)
        return {"sku": args["sku"], "box": f"box-{args['order']}"}


class SendReceipt(gd.Job, name="demo.SendReceipt", queue="mail", max_attempts=5):
    def perform(self, args: dict[str, Any], ctx: gd.Context[Any]) -> dict[str, Any]:
        if ctx.attempt == 0 and args["order"] % 4 == 0:
            raise ConnectionError("mail server busy")
        return {"sent_to": f"order-{args['order']}", "attempts": ctx.attempt + 1}

    def backoff(self, attempt: int) -> float:
        return 0.1 * 2.0**attempt
