"""What the client calls accept and return, the same in ``Engine`` and ``SyncClient``:
instance ids, the shape of a plain machine's state, the typed inbox and children, and
the richer signal result the command line reports."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import gen_durable as gd

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
