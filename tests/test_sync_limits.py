"""``SyncClient``'s rate-limit calls (SPEC §23): the same checks, statements and
results as ``Engine``'s, so a limit set from a script is the one every node enforces."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import gen_durable as gd

NOWHERE = "postgresql://postgres@127.0.0.1:1/none"  # nothing listens: no call may connect

BAD: list[tuple[str, Any, dict[str, Any]]] = [
    ("x", 0, {}),
    ("x", -1, {}),
    ("x", 1, {"per": 0}),
    ("x", 1, {"burst": 0.5}),
    ("x", True, {}),
    ("x:y", 1, {}),
    ("", 1, {}),
    ("a b", 1, {}),
]


@pytest.mark.parametrize(("name", "rate", "kw"), BAD)
async def test_bad_limits_are_refused_alike_before_anything_runs(
    name: str, rate: Any, kw: dict[str, Any]
) -> None:
    client = gd.SyncClient(NOWHERE)
    engine = gd.Engine(NOWHERE, queues={})  # never started
    with pytest.raises(gd.ConfigurationError) as sync_error:
        client.set_rate_limit(name, rate, **kw)
    with pytest.raises(gd.ConfigurationError) as async_error:
        await engine.set_rate_limit(name, rate, **kw)
    assert str(sync_error.value) == str(async_error.value)
    if name != "x":
        with pytest.raises(gd.ConfigurationError):
            client.delete_rate_limit(name)
    assert client._conn is None  # no connection was ever opened


async def test_sync_limits_round_trip_and_agree_with_the_engine(make_engine, dsn, schema) -> None:
    engine = make_engine(queues={})
    await engine.start()

    def script() -> tuple[Any, ...]:
        with gd.SyncClient(dsn, schema=schema) as client:
            assert client.rate_limits() == []
            made = client.set_rate_limit("api", 20, burst=5)
            changed = client.set_rate_limit("api", 10, per=60)
            client.set_rate_limit("other", 3)
            listed = client.rate_limits()
            gone = client.delete_rate_limit("other")
            again = client.delete_rate_limit("other")
            return made, changed, listed, gone, again

    made, changed, listed, gone, again = await asyncio.to_thread(script)
    assert (made.name, made.rate, made.per, made.burst) == ("api", 20.0, 1.0, 5.0)
    assert (changed.rate, changed.per, changed.burst) == (10.0, 60.0, 10.0)
    assert [r.name for r in listed] == ["api", "other"]
    assert gone is True and again is False
    # The engine reads exactly what the script wrote: the same type, the same values.
    assert await engine.rate_limits() == [changed]
