"""An order: reserve stock for each line (one child job per line), wait for the
payment, then ship a day later. Written with ``@gd.step`` methods; every step is
idempotent, as steps that may run again after a crash must be."""

from __future__ import annotations

import gen_durable as gd


class OrderState(gd.State):
    order_id: int
    skus: list[str]
    paid_cents: int = 0
    reserved: int = 0


class Reserve(gd.Job[dict[str, str]], name="shop.reserve", queue="stock"):
    """Reserve one line's stock; a sku of "" is out of stock for good."""

    def perform(self, args: dict[str, str]) -> str:
        if not args["sku"]:
            raise gd.Cancel("out of stock")
        return f"reserved {args['sku']}"


class Order(gd.FSM[OrderState], name="shop.order", initial="reserve"):
    @gd.step
    def reserve(self, ctx: gd.Context[OrderState]) -> gd.Outcome[OrderState]:
        lines = [gd.Spec(Reserve, args={"sku": sku}) for sku in ctx.state.skus]
        return gd.ScheduleChilds(Order.reserved, lines, ctx.state)

    @gd.step
    def reserved(self, ctx: gd.Context[OrderState]) -> gd.Outcome[OrderState]:
        if any(child.status != "done" for child in ctx.childs):
            return gd.Stop("a line could not be reserved")
        state = ctx.state.model_copy(update={"reserved": len(ctx.childs)})
        return gd.Next(Order.await_payment, state)

    @gd.step
    async def await_payment(self, ctx: gd.Context[OrderState]) -> gd.Outcome[OrderState]:
        paid = sum(int(s.payload["cents"]) for s in ctx.signals if s.name == "paid")
        if not paid:
            return gd.Await("paid", ctx.state)
        state = ctx.state.model_copy(update={"paid_cents": paid})
        return gd.Next(Order.ship, state, delay=86_400)  # ships the next day

    @gd.step
    async def ship(self, ctx: gd.Context[OrderState]) -> gd.Outcome[OrderState]:
        return gd.Done({"order": ctx.state.order_id, "paid_cents": ctx.state.paid_cents})
