"""What the client calls accept and return, the same in ``Engine`` and ``SyncClient``:
instance ids, the shape of a plain machine's state, the typed inbox and children, and
the richer signal result the command line reports."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from typing import Any

import pytest

import gen_durable as gd

from .conftest import wait_for
from .test_bad_input import rows

NOWHERE = "postgresql://postgres@127.0.0.1:1/none"  # nothing listens: no call may connect


class Parked(gd.FSM):
    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        return gd.Await("go", ctx.state)


# -- ids --------------------------------------------------------------------------------

NOT_TARGETS: list[Any] = [1.0, True, None, [1], {"id": 1}]


@pytest.mark.parametrize("bad", NOT_TARGETS)
async def test_every_call_taking_a_target_refuses_a_non_id_non_key_before_anything_runs(
    bad: Any,
) -> None:
    engine = gd.Engine(NOWHERE, queues={})  # never started: reaching a statement would say so
    client = gd.SyncClient(NOWHERE)
    calls: list[Any] = [
        lambda: client.get(bad),
        lambda: client.signal(bad, "go"),
        lambda: client.wait(bad, timeout=0),
        lambda: client.inbox(bad),
        lambda: client.children(bad),
    ]
    for call in calls:
        with pytest.raises(gd.ConfigurationError, match=r"named by its id .* or its unique_key"):
            call()
    for coro in (
        engine.get(bad),
        engine.signal(bad, "go"),
        engine.wait(bad, timeout=0),
        engine.inbox(bad),
        engine.children(bad),
    ):
        with pytest.raises(gd.ConfigurationError, match=r"named by its id .* or its unique_key"):
            await coro
    assert client._conn is None  # no connection was ever opened


async def test_a_str_target_is_a_key_not_an_id(make_engine, dsn, schema) -> None:
    # PostgreSQL would cast "1" to the id 1; a str names a unique_key instead (SPEC §20).
    async with make_engine(queues={}) as engine:
        iid = await engine.insert(Parked)
        assert await engine.get(str(iid)) is None
        with pytest.raises(gd.NoSuchInstance, match="ever carried"):
            await engine.signal(str(iid), "go")
        assert await engine.inbox(str(iid)) == []  # no row carries the key "1"
        assert (await engine.get(iid)) is not None

    def sync() -> None:
        with gd.SyncClient(dsn, schema=schema) as client:
            with pytest.raises(gd.NoSuchInstance):
                client.signal(str(iid).encode(), "go")
            assert client.get(str(iid)) is None
            assert client.signal(iid, "go") is True
            assert client.inbox(iid)[0].name == "go"  # only the id-addressed signal

    await asyncio.to_thread(sync)


# -- a plain machine's state is a JSON object ---------------------------------------------


class Bag(gd.FSM):
    """No State model: a plain dict. ``how`` picks where the bad value ``bad`` goes."""

    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        bad, how = ctx.state.get("bad"), ctx.state.get("how")
        if step == "start" and how == "outcome":
            return gd.Next("never", bad)
        if step == "start" and how == "child":
            return gd.ScheduleChilds("never", [gd.Spec(Bag, state=bad)])
        if step == "start":
            return gd.Next("kept", None)  # None keeps the stored state
        return gd.Done(ctx.state)

    def handle(self, error: Exception, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        return gd.Stop(f"{type(error).__name__}: {error}")


BAD_STATES: list[Any] = [[1, 2], "a string", 3]


@pytest.mark.parametrize("bad", BAD_STATES)
async def test_plain_state_that_is_not_an_object_is_refused_on_insert(
    bad: Any, make_engine, conn, dsn, schema
) -> None:
    refused = pytest.raises(gd.ConfigurationError, match="must be a JSON object")
    async with make_engine(queues={}) as engine:
        with refused:
            await engine.insert(Bag, state=bad)
        with refused:
            await engine.insert(Bag, args=bad)
        with refused:
            await engine.insert_all([Bag, gd.Spec(Bag, state=bad)])

        def sync() -> None:
            with gd.SyncClient(dsn, schema=schema) as client:
                with refused:
                    client.insert(Bag, state=bad)
                with refused:
                    client.insert_all([gd.Spec(Bag, state=bad), Bag])

        await asyncio.to_thread(sync)
        assert await rows(conn, schema) == 0
        default = await engine.get(await engine.insert(Bag, state=None))
        assert default is not None and default.state == {}


@pytest.mark.parametrize("how", ["outcome", "child"])
async def test_plain_state_that_is_not_an_object_is_an_invalid_outcome(
    how: str, make_engine, conn, schema
) -> None:
    async with make_engine() as engine:
        bad = [await engine.insert(Bag, state={"bad": v, "how": how}) for v in BAD_STATES]
        kept = await engine.insert(Bag, state={"n": 1})
        for iid in bad:
            inst = await engine.wait(iid, timeout=20)
            assert inst.status == "failed" and inst.step == "start", inst
            assert inst.last_error is not None
            assert inst.last_error.startswith("InvalidOutcome: ")
            assert "must be a JSON object" in inst.last_error
            assert inst.state["how"] == how  # nothing of the outcome was written
        assert (await engine.wait(kept, timeout=20)).result == {"n": 1}
    assert await rows(conn, schema) == len(BAD_STATES) + 1  # no child was inserted


# -- inbox and children are the items a step sees ---------------------------------------


class Kid(gd.Job):
    def perform(self, args: dict[str, Any]) -> dict[str, Any]:
        if args.get("fail"):
            raise gd.Cancel("no")
        return {"kid": args["n"]}


class Family(gd.FSM):
    """Fans out two kids, then awaits ``go`` and finishes with what its steps saw."""

    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        if step == "start":
            kids = [gd.Spec(Kid, args={"n": 1}), gd.Spec(Kid, args={"n": 2, "fail": True})]
            return gd.ScheduleChilds("joined", kids)
        if step == "joined":
            seen = [dataclasses.astuple(c) for c in ctx.childs]
            return gd.Next("wait", {"childs": seen})
        if not any(s.name == "go" for s in ctx.signals):
            return gd.Await("go", ctx.state)
        return gd.Done({**ctx.state, "signals": [dataclasses.astuple(s) for s in ctx.signals]})


async def test_inbox_and_children_are_the_typed_items_of_ctx(make_engine, dsn, schema) -> None:
    async with make_engine() as engine:
        iid = await engine.insert(Family)
        await wait_for(lambda: parked(engine, iid))
        assert await engine.signal(iid, "other", {"o": 1}, dedup_key="k-other")
        assert await engine.signal(iid, "go", {"g": 2})
        done = await engine.wait(iid, timeout=20)
        children, inbox = await engine.children(iid), await engine.inbox(iid)
    assert done.status == "done", done.last_error
    assert children == [gd.Child(*c) for c in done.result["childs"]]
    assert [(c.fsm, c.status, c.result, c.last_error) for c in children] == [
        (Kid.__gd_name__, "done", {"kid": 1}, None),
        (Kid.__gd_name__, "failed", None, "no"),
    ]
    seen = [gd.Signal(*s) for s in done.result["signals"]]
    assert [(s.name, s.payload, s.dedup_key, s.inserted_at) for s in seen] == [
        ("other", {"o": 1}, None, None),  # a step's snapshot does not load these two
        ("go", {"g": 2}, None, None),
    ]
    [other] = inbox  # "go" was consumed by the step it woke
    assert isinstance(other, gd.Signal)
    assert (other.id, other.name, other.payload) == (seen[0].id, "other", {"o": 1})
    assert other.dedup_key == "k-other" and isinstance(other.inserted_at, dt.datetime)

    def sync() -> tuple[list[gd.Child], list[gd.Signal]]:
        with gd.SyncClient(dsn, schema=schema) as client:
            return client.children(iid), client.inbox(iid)

    assert await asyncio.to_thread(sync) == (children, inbox)


async def parked(engine: gd.Engine, iid: int) -> bool:
    inst = await engine.get(iid)
    return inst is not None and inst.status == "awaiting_signal"


# -- what a signal did ----------------------------------------------------------------------


async def test_deliver_tells_a_dedup_hit_from_a_stored_signal(
    make_engine, conn, dsn, schema
) -> None:
    async with make_engine(queues={}) as engine:
        iid = await engine.insert(Parked)
        assert await engine.deliver(iid, "go", {"n": 1}, dedup_key="k") == "stored"
        assert await engine.deliver(iid, "go", {"n": 2}, dedup_key="k") == "duplicate"
        assert await engine.signal(iid, "go", {"n": 3}, dedup_key="k") is True  # SPEC §6
        assert await engine.deliver(iid, "go") == "stored"  # no key: never a duplicate

        def sync() -> bool:
            with gd.SyncClient(dsn, schema=schema) as client:
                return client.signal(iid, "go", dedup_key="k2") and client.signal(
                    iid, "go", dedup_key="k2"
                )

        assert await asyncio.to_thread(sync) is True  # stored, then a duplicate: both True
        assert [(s.payload, s.dedup_key) for s in await engine.inbox(iid)] == [
            ({"n": 1}, "k"),
            ({}, None),
            ({}, "k2"),
        ]
        finished = await engine.insert(Parked)
        async with engine._require_pool().connection() as c:
            await c.execute(
                f"UPDATE \"{schema}\".gen_durable SET status = 'done' WHERE id = %s", (finished,)
            )
        assert await engine.deliver(finished, "go", dedup_key="k") == "finished"
        assert await engine.signal(finished, "go") is False
        with pytest.raises(gd.NoSuchInstance):
            await engine.deliver(10**12, "go")
