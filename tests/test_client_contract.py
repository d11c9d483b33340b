"""What the client calls accept and return, the same in ``Engine`` and ``SyncClient``:
instance ids, the shape of a plain machine's state, the typed inbox and children, and
the richer signal result the command line reports."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import gen_durable as gd

from .test_bad_input import rows

NOWHERE = "postgresql://postgres@127.0.0.1:1/none"  # nothing listens: no call may connect


class Parked(gd.FSM):
    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        return gd.Await("go", ctx.state)


# -- ids --------------------------------------------------------------------------------

NOT_IDS: list[Any] = ["1", b"1", 1.0, True, None]


@pytest.mark.parametrize("bad", NOT_IDS)
async def test_every_call_taking_an_id_refuses_a_non_int_before_anything_runs(
    bad: Any,
) -> None:
    engine = gd.Engine(NOWHERE, queues={})  # never started: reaching a statement would say so
    client = gd.SyncClient(NOWHERE)
    calls: list[Any] = [
        lambda: client.get(bad),
        lambda: client.signal(bad, "go"),
        lambda: client.wait(bad, timeout=0),
    ]
    for call in calls:
        with pytest.raises(gd.ConfigurationError, match="an instance id is an int"):
            call()
    for coro in (
        engine.get(bad),
        engine.signal(bad, "go"),
        engine.wait(bad, timeout=0),
        engine.inbox(bad),
        engine.children(bad),
    ):
        with pytest.raises(gd.ConfigurationError, match="an instance id is an int"):
            await coro
    assert client._conn is None  # no connection was ever opened


async def test_a_str_id_says_keys_are_not_supported_yet(make_engine, dsn, schema) -> None:
    async with make_engine(queues={}) as engine:
        iid = await engine.insert(Parked)
        with pytest.raises(gd.ConfigurationError, match="unique_key is not supported yet"):
            await engine.get(str(iid))
        assert (await engine.get(iid)) is not None

    def sync() -> None:
        with gd.SyncClient(dsn, schema=schema) as client:
            with pytest.raises(gd.ConfigurationError, match="unique_key is not supported yet"):
                client.signal(str(iid), "go")
            with pytest.raises(gd.ConfigurationError, match="unique_key is not supported yet"):
                client.get(str(iid))
            assert client.signal(iid, "go") is True

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
