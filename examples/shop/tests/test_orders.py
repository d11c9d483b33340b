"""The shop's orders, tested with the gen_durable plugin's schema and ``drain``."""

from __future__ import annotations

from shop.machines import Order, OrderState

import gen_durable as gd
from gen_durable.testing import IsolatedSchema, drain


async def test_an_order_is_reserved_paid_and_shipped(gd_schema: IsolatedSchema) -> None:
    async with gd_schema.engine() as engine:
        order = await engine.insert(Order, state=OrderState(order_id=7, skus=["A1", "B2"]))
        parked = await drain(engine)
        row = await engine.get(order)
        assert row is not None and row.status == "awaiting_signal"
        assert row.step == "await_payment"
        assert parked["done"] == 2  # the two reservations

        await engine.signal(order, "paid", {"cents": 1999})
        await drain(engine)  # the day's wait before shipping is collapsed
        row = await engine.get(order)
    assert row is not None and row.status == "done"
    assert row.result == {"order": 7, "paid_cents": 1999}


async def test_an_order_with_a_line_out_of_stock_fails(gd_schema: IsolatedSchema) -> None:
    async with gd_schema.engine() as engine:
        order = await engine.insert(Order, state=OrderState(order_id=8, skus=["A1", ""]))
        await drain(engine)
        row = await engine.get(order)
        children = await engine.children(order)
    assert row is not None and row.status == "failed"
    assert row.last_error == "a line could not be reserved"
    assert sorted(c.status for c in children) == ["done", "failed"]


async def test_each_test_has_a_schema_of_its_own(gd_schema: IsolatedSchema) -> None:
    async with gd_schema.engine() as engine:
        # Nothing from the other tests is visible here.
        assert await drain(engine) == gd.testing.DrainResult()
