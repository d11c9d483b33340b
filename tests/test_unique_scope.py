"""Any unique scope (SPEC §10, revised in v2), against real PostgreSQL.

A row takes its key only at insert (when its scope holds `runnable`); every statement
that changes a status clears the guard when the new status is outside the row's scope,
and none ever sets it again — so a row returning into its scope cannot collide with a
newer holder of its key. One test per statement kind, then the engine end to end.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from psycopg import sql

import gen_durable as gd
from gen_durable._db.queries import Queries

from .conftest import wait_for
from .sqlhelp import (
    claim,
    claim_one,
    complete,
    fetch,
    insert,
    rows,
    run,
    schedule,
    signal,
)

LOCK = "{runnable,executing}"
KEY = b"k"


async def guard(conn: Any, schema: str, iid: int) -> bytes | None:
    return (await fetch(conn, schema, iid))["unique_guard"]


async def keyed(conn: Any, q: Queries, scope: str, **extra: Any) -> list[int]:
    return await insert(conn, q, {"unique_key": KEY, "unique_scope": scope, **extra})


async def narrow(conn: Any, schema: str, iid: int, scope: str) -> None:
    """Test setup: shrink a stored scope under a held guard, so that a move into
    `runnable` leaves it (never reachable through the API, where a guard implies
    `runnable` in the scope: the statements test it anyway)."""
    query = sql.SQL("UPDATE {}.gen_durable SET unique_scope = {} WHERE id = %s").format(
        sql.Identifier(schema), sql.Literal(scope)
    )
    await conn.execute(query, (iid,))


# -- insert ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "held"),
    [
        (LOCK, True),
        ("{runnable}", True),
        ("{done}", False),
        ("{executing,done}", False),
        ("{}", False),
    ],
)
async def test_insert_takes_the_key_only_when_the_scope_holds_runnable(
    conn, q, schema, scope, held
) -> None:
    (a,) = await keyed(conn, q, scope)
    assert await guard(conn, schema, a) == (KEY if held else None)
    # A scope without runnable never occupies: the same key goes in again.
    assert len(await keyed(conn, q, scope)) == (0 if held else 1)


async def test_insert_all_dedup_within_the_batch_and_against_stored_rows(conn, q) -> None:
    spec = {"unique_key": KEY, "unique_scope": LOCK}
    got = await run(
        conn, q.insert(rows(spec, spec, {"unique_key": b"other", "unique_scope": LOCK}))
    )
    assert len(got[0][0]) == 2
    again = await run(conn, q.insert(rows(spec, {})))
    assert len(again[0][0]) == 1


# -- each statement that changes a status ------------------------------------------


async def test_pick_clears_the_guard_when_executing_is_outside_the_scope(conn, q, schema) -> None:
    (a,) = await keyed(conn, q, "{runnable}")
    await claim_one(conn, q, "n:1")
    assert await guard(conn, schema, a) is None
    (b,) = await keyed(conn, q, LOCK)  # the key is free again
    await claim_one(conn, q, "n:2")
    assert await guard(conn, schema, b) == KEY  # executing is in b's scope: kept
    assert await keyed(conn, q, LOCK) == []


@pytest.mark.parametrize(
    ("scope", "kind", "status", "held"),
    [
        (LOCK, "await", "awaiting_signal", False),
        (LOCK, "next", "runnable", True),
        (LOCK, "done", "done", False),
        ("{runnable,executing,awaiting_signal,awaiting_children}", "stop", "failed", False),
        ("{runnable,executing,awaiting_signal,awaiting_children,done}", "done", "done", True),
        ("{runnable,executing,failed}", "stop", "failed", True),
    ],
)
async def test_complete_clears_the_guard_only_when_leaving_the_scope(
    conn, q, schema, scope, kind, status, held
) -> None:
    (a,) = await keyed(conn, q, scope)
    await claim_one(conn, q, "n:1")
    got = await complete(conn, q, id=a, token="n:1", kind=kind, awaits="go", result="1", error="e")
    assert got == [(a, status)]
    assert await guard(conn, schema, a) == (KEY if held else None)


async def test_a_kept_next_leaves_the_guard_as_it_is(conn, q, schema) -> None:
    (a,) = await keyed(conn, q, LOCK)
    await claim_one(conn, q, "n:1")
    before = await fetch(conn, schema, a)
    assert await complete(conn, q, id=a, token="n:1", kind="next", keep=True) == [(a, "executing")]
    after = await fetch(conn, schema, a)
    assert after["unique_guard"] == before["unique_guard"] == KEY


async def test_schedule_childs_parks_the_parent_out_of_its_scope(conn, q, schema) -> None:
    (parent,) = await keyed(conn, q, LOCK)
    await claim_one(conn, q, "n:1")
    got = await schedule(conn, q, parent, "n:1", rows({"parent_id": parent}))
    assert got[0][1] == "awaiting_children"
    assert await guard(conn, schema, parent) is None


async def test_the_barrier_flip_clears_and_never_retakes(conn, q, schema) -> None:
    # A parent that left its scope when it parked does not take the key back when
    # its last child releases it; one whose scope lacks runnable has it cleared.
    for queue, scope in (("a", LOCK), ("b", "{runnable,executing,awaiting_children}")):
        spec = {"unique_key": scope.encode(), "unique_scope": scope, "queue": queue}
        (parent,) = await insert(conn, q, spec)
        await claim_one(conn, q, "p:1", queue=queue)
        await schedule(conn, q, parent, "p:1", rows({"parent_id": parent}))
        if scope != LOCK:
            assert await guard(conn, schema, parent) == scope.encode()
            await narrow(conn, schema, parent, "{awaiting_children}")
        (kid, *_) = await claim_one(conn, q, "c:1")
        assert await complete(conn, q, id=kid, token="c:1", kind="done", result="1")
        p = await fetch(conn, schema, parent)
        assert (p["status"], p["unique_guard"]) == ("runnable", None)


async def test_a_signal_wake_never_retakes_the_key(conn, q, schema) -> None:
    """The issue's own case at the SQL level: parked, the key goes to a newer row;
    the wake, the pick and the Done of the first row cannot collide with it."""
    (a,) = await keyed(conn, q, LOCK)
    await claim_one(conn, q, "n:1")
    await complete(conn, q, id=a, token="n:1", kind="await", awaits="go")
    (b,) = await keyed(conn, q, LOCK, queue="other")
    assert await guard(conn, schema, b) == KEY
    assert (await signal(conn, q, a, "go"))[2] is True
    assert (await fetch(conn, schema, a))["status"] == "runnable"
    assert (await claim_one(conn, q, "n:2"))[0] == a
    assert await complete(conn, q, id=a, token="n:2", kind="done", result="1") == [(a, "done")]
    assert await guard(conn, schema, a) is None and await guard(conn, schema, b) == KEY


async def test_a_signal_wake_clears_when_runnable_is_outside_the_scope(conn, q, schema) -> None:
    (a,) = await keyed(conn, q, "{runnable,executing,awaiting_signal}")
    await claim_one(conn, q, "n:1")
    await complete(conn, q, id=a, token="n:1", kind="await", awaits="go")
    assert await guard(conn, schema, a) == KEY
    await narrow(conn, schema, a, "{awaiting_signal}")
    await signal(conn, q, a, "other")  # no wake: the row is rewritten unchanged
    assert await guard(conn, schema, a) == KEY
    await signal(conn, q, a, "go")
    assert await guard(conn, schema, a) is None


async def test_release_clears_when_runnable_is_outside_the_scope(conn, q, schema) -> None:
    (a,) = await keyed(conn, q, LOCK)
    await claim_one(conn, q, "n:1")
    await run(conn, q.release([a], ["n:1"]))
    assert await guard(conn, schema, a) == KEY  # back into its scope, still holding
    await claim_one(conn, q, "n:2")
    await narrow(conn, schema, a, "{executing}")
    await run(conn, q.release([a], ["n:2"]))
    assert await guard(conn, schema, a) is None


@pytest.mark.parametrize(("crash_limit", "status"), [(1, "failed"), (5, "runnable")])
async def test_the_reaper_clears_when_leaving_the_scope(
    conn, q, schema, crash_limit, status
) -> None:
    (a,) = await keyed(conn, q, LOCK)
    await claim(conn, q, "n:1", ttl=-1)
    if status == "runnable":
        await narrow(conn, schema, a, "{executing}")
    assert await run(conn, q.reap(10, crash_limit=crash_limit)) == [(a, status)]
    assert await guard(conn, schema, a) is None


# -- the engine end to end ---------------------------------------------------------

GATE: dict[str, asyncio.Event] = {}


class Waiter(gd.FSM):
    async def step(self, step: str, ctx: gd.Context) -> gd.Outcome:
        if not ctx.signals:
            return gd.Await("go", ctx.state)
        return gd.Done("woken")


class Holder(gd.FSM):
    async def step(self, step: str, ctx: gd.Context) -> gd.Outcome:
        await GATE["hold"].wait()
        return gd.Done("held")


async def test_a_queueing_lock_lets_a_parked_instance_finish_behind_a_newer_holder(
    make_engine,
) -> None:
    GATE["hold"] = asyncio.Event()
    lock = {"unique_key": "lock", "unique_scope": ["runnable", "executing"]}
    engine = make_engine(fsms=[Waiter, Holder])
    async with engine:
        first = await engine.insert(Waiter, **lock)
        await wait_for(lambda: _is(engine, first, "awaiting_signal"))
        assert (await engine.get(first)).unique_guard is None  # parked: key freed
        second = await engine.insert(Holder, **lock)
        await wait_for(lambda: _is(engine, second, "executing"))
        with pytest.raises(gd.Duplicate):
            await engine.insert(Holder, **lock)
        assert await engine.signal(first, "go") is True
        await wait_for(lambda: _is(engine, first, "done"))
        assert (await engine.get(second)).unique_guard == b"lock"
        with pytest.raises(gd.Duplicate):
            await engine.insert(Holder, **lock)
        GATE["hold"].set()
        await wait_for(lambda: _is(engine, second, "done"))
        done = {i: await engine.get(i) for i in (first, second)}
        assert [(d.status, d.result, d.last_error) for d in done.values()] == [
            ("done", "woken", None),
            ("done", "held", None),
        ]
        third = await engine.insert(Holder, **lock)
        await wait_for(lambda: _is(engine, third, "done"))


async def test_a_scope_without_runnable_never_occupies(make_engine) -> None:
    GATE["hold"] = asyncio.Event()
    GATE["hold"].set()
    engine = make_engine(fsms=[Holder])
    async with engine:
        ids = [await engine.insert(Holder, unique_key="x", unique_scope=["done"]) for _ in "ab"]
        for iid in ids:
            await wait_for(lambda iid=iid: _is(engine, iid, "done"))
            assert (await engine.get(iid)).unique_guard is None
        kept = await engine.insert(Holder, unique_key="y", unique_scope=["runnable", "done"])
        await wait_for(lambda: _is(engine, kept, "done"))
        # The key left with executing and is not taken back at done.
        assert (await engine.get(kept)).unique_guard is None


async def _is(engine: gd.Engine, iid: int, status: str) -> bool:
    inst = await engine.get(iid)
    return inst is not None and inst.status == status
