"""Jobs (SPEC §12) and children with the join barrier (SPEC §7), end to end."""

from __future__ import annotations

from typing import Any

import gen_durable as gd
from gen_durable.testing import drain

from .test_engine_basics import finished


class Echo(gd.Job):
    def perform(self, args: dict[str, Any]) -> Any:
        return {"echo": args}


class Typed(gd.Job):
    class State(gd.State):
        x: int

    async def perform(self, args: Typed.State, ctx: gd.Context[Typed.State]) -> Any:
        return args.x * 2 + ctx.attempt


ATTEMPTS: dict[str, list[int]] = {}


class Twice(gd.Job, max_attempts=5):
    def perform(self, args: dict[str, Any], ctx: gd.Context[dict[str, Any]]) -> Any:
        ATTEMPTS.setdefault("twice", []).append(ctx.attempt)
        if ctx.attempt < 2:
            raise ValueError("not yet")
        return "ok"

    def backoff(self, attempt: int) -> float:
        return 0.01


class Hopeless(gd.Job, max_attempts=3):
    def perform(self, args: dict[str, Any], ctx: gd.Context[dict[str, Any]]) -> Any:
        ATTEMPTS.setdefault("hopeless", []).append(ctx.attempt)
        raise RuntimeError("always")

    def backoff(self, attempt: int) -> float:
        return 0


class Cancelled(gd.Job):
    def perform(self, args: dict[str, Any]) -> Any:
        ATTEMPTS.setdefault("cancel", []).append(1)
        raise gd.Cancel("customer gone")


async def test_every_job_outcome(make_engine) -> None:
    ATTEMPTS.clear()
    async with make_engine() as engine:
        echo = await engine.insert(Echo, args={"a": 1})
        typed = await engine.insert(Typed, args={"x": 21})
        twice = await engine.insert(Twice)
        hopeless = await engine.insert(Hopeless)
        cancelled = await engine.insert(Cancelled)
        r_echo = await finished(engine, echo)
        r_typed = await finished(engine, typed)
        r_twice = await finished(engine, twice)
        r_hopeless = await finished(engine, hopeless)
        r_cancel = await finished(engine, cancelled)
    assert (r_echo.status, r_echo.result) == ("done", {"echo": {"a": 1}})
    assert (r_typed.status, r_typed.result) == ("done", 42)
    assert (r_twice.status, r_twice.result, r_twice.attempt) == ("done", "ok", 2)
    assert ATTEMPTS["twice"] == [0, 1, 2]
    assert r_hopeless.status == "failed"
    assert r_hopeless.attempt == Hopeless.max_attempts - 1
    assert ATTEMPTS["hopeless"] == [0, 1, 2]
    assert r_hopeless.last_error == "RuntimeError: always"
    assert (r_cancel.status, r_cancel.last_error, r_cancel.attempt) == (
        "failed",
        "customer gone",
        0,
    )
    assert ATTEMPTS["cancel"] == [1]


def test_job_defaults() -> None:
    assert Echo.max_attempts == 20
    assert [Echo().backoff(a) for a in (0, 1, 5, 8, 9, 20)] == [1, 2, 32, 256, 300, 300]


class Pack(gd.Job):
    def perform(self, args: dict[str, Any]) -> Any:
        if args.get("fail"):
            raise gd.Cancel(f"cannot pack {args['sku']}")
        return {"packed": args["sku"]}


class Order(gd.FSM):
    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        if step == "start":
            skus = ctx.state["skus"]
            children = [gd.Spec(Pack, args={"sku": s, "fail": s == "BAD"}) for s in skus]
            return gd.ScheduleChilds("joined", children, ctx.state)
        assert step == "joined"
        return gd.Done(
            {
                "childs": [(c.fsm, c.status, c.state, c.result, c.last_error) for c in ctx.childs],
                "ids_sorted": [c.id for c in ctx.childs] == sorted(c.id for c in ctx.childs),
            }
        )


async def test_fan_out_join_with_a_failed_child(make_engine) -> None:
    # drain runs the tree on the engine's own executor and SQL: no polling.
    async with make_engine(queues={}) as engine:
        iid = await engine.insert(Order, state={"skus": ["A", "BAD", "C"]})
        ran = await drain(engine)
        inst = await engine.get(iid)
        kids = await engine.children(iid)
    assert ran["schedule_childs"] == 1 and ran["done"] == 3 and ran["stop"] == 1
    assert inst.status == "done" and inst.step == "joined"
    assert inst.children_pending == 0
    res = inst.result
    assert res["ids_sorted"] is True
    assert [c[1] for c in res["childs"]] == ["done", "failed", "done"]
    assert res["childs"][0] == [
        Pack.__gd_name__,
        "done",
        {"sku": "A", "fail": False},
        {"packed": "A"},
        None,
    ]
    assert res["childs"][1][4] == "cannot pack BAD"
    assert len(kids) == 3  # children are not deleted on read


async def test_fan_out_with_zero_children(make_engine) -> None:
    async with make_engine(queues={}) as engine:
        iid = await engine.insert(Order, state={"skus": []})
        assert (await drain(engine)).steps == 2
        inst = await engine.get(iid)
    assert inst.status == "done" and inst.result["childs"] == []


class Nested(gd.FSM):
    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        depth = ctx.state["depth"]
        if step == "start" and depth > 0:
            return gd.ScheduleChilds(
                "joined", [gd.Spec(Nested, state={"depth": depth - 1})] * 2, ctx.state
            )
        if step == "joined":
            return gd.Done(1 + sum(c.result for c in ctx.childs))
        return gd.Done(1)


async def test_nested_children(make_engine) -> None:
    async with make_engine(queues={}) as engine:
        iid = await engine.insert(Nested, state={"depth": 3})
        ran = await drain(engine)
        inst = await engine.get(iid)
    assert inst.result == 15  # a full binary tree of depth 3
    # 7 inner nodes fan out and join, 8 leaves finish at once.
    assert ran["schedule_childs"] == 7 and ran["done"] == 15


class UniqueKids(gd.FSM):
    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        if step == "start":
            same = [gd.Spec(Pack, args={"sku": "X"}, unique_key="pack-X")] * 3
            return gd.ScheduleChilds("joined", same, ctx.state)
        return gd.Done(len(ctx.childs))


async def test_children_deduplicated_count_only_inserted(make_engine) -> None:
    async with make_engine(queues={}) as engine:
        iid = await engine.insert(UniqueKids)
        await drain(engine)
        inst = await engine.get(iid)
    assert inst.result == 1


async def test_duplicate_insert_raises_and_insert_all_drops(make_engine) -> None:
    async with make_engine(queues={}) as client:
        first = await client.insert(Echo, unique_key="k1")
        try:
            await client.insert(Echo, unique_key="k1")
        except gd.Duplicate as exc:
            assert exc.unique_key == b"k1"
        else:
            raise AssertionError("expected gd.Duplicate")
        ids = await client.insert_all(
            [gd.Spec(Echo, unique_key=k) for k in ("k1", "k2", "k2", "k3")] + [Echo]
        )
        assert len(ids) == 3 and first not in ids
