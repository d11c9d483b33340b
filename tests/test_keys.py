"""Business keys as addresses and signal-with-start (SPEC §20).

The races are forced, not hoped for: one connection holds its transaction open at the
critical point (an occupant's finish, a competing signal-with-start's insert),
``pg_locks`` shows the engine's statement waiting on it, then the first commits.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import psycopg
import pytest

import gen_durable as gd
from gen_durable._db.schema import KEYS_DOWN, KEYS_UP, VERSIONS

from .sqlhelp import claim_one, complete, count, fetch, inbox, wait_lock_waiters

KEYS_VERSION = VERSIONS.index((KEYS_UP, KEYS_DOWN)) + 1


class Order(gd.FSM, name="tests.keys.Order"):
    """Waits for ``paid``; started by a webhook as often as by the shop."""

    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        if any(s.name == "paid" for s in ctx.signals):
            return gd.Done({"paid": [s.payload for s in ctx.signals if s.name == "paid"]})
        return gd.Await("paid", ctx.state)


def start(key: str | bytes, **options: Any) -> gd.Spec:
    return gd.Spec(Order, unique_key=key, **options)


async def rows_with_key(conn: Any, schema: str, key: bytes) -> list[tuple[int, str]]:
    cur = await conn.execute(
        f'SELECT id, status::text FROM "{schema}".gen_durable WHERE unique_key = %s ORDER BY id',
        (key,),
    )
    return [(r[0], r[1]) for r in await cur.fetchall()]


# -- signal and get by key ---------------------------------------------------------------


async def test_a_key_addresses_its_occupant(make_engine, conn, schema) -> None:
    async with make_engine(queues={}) as engine:
        iid = await engine.insert(Order, unique_key="order-1")
        assert await engine.signal("order-1", "paid", {"n": 1}) is True
        assert await engine.signal(b"order-1", "paid", {"n": 2}, dedup_key="d") is True
        assert await engine.deliver("order-1", "paid", {"n": 2}, dedup_key="d") == "duplicate"
        assert [s.payload for s in await engine.inbox(iid)] == [{"n": 1}, {"n": 2}]
        assert await engine.inbox("order-1") == await engine.inbox(iid)
        child = await engine.insert(Order, unique_key="order-1-child")
        await conn.execute(
            f'UPDATE "{schema}".gen_durable SET parent_id = %s WHERE id = %s', (iid, child)
        )
        assert [c.id for c in await engine.children("order-1")] == [child]
        assert (await engine.get("order-1")).id == iid  # type: ignore[union-attr]
        assert (await engine.get(b"order-1")).id == iid  # type: ignore[union-attr]


async def test_a_key_no_row_ever_carried_is_no_such_instance(make_engine, conn, schema) -> None:
    async with make_engine(queues={}) as engine:
        await engine.insert(Order, unique_key="other")
        with pytest.raises(gd.NoSuchInstance) as err:
            await engine.signal("order-404", "paid")
        assert err.value.instance_id == b"order-404"
        assert await engine.get("order-404") is None
        with pytest.raises(gd.NoSuchInstance):
            await engine.wait("order-404", timeout=1)
    assert await count(conn, schema, "signals") == 0


async def test_a_key_whose_rows_all_left_it_refuses_with_false(make_engine, conn, schema) -> None:
    async with make_engine(queues={"default": 2}) as engine:
        first = await engine.insert(Order, unique_key="order-2")
        assert await engine.signal("order-2", "paid", {"n": 1}) is True
        assert (await engine.wait("order-2", timeout=20)).id == first  # done: key freed
        assert await engine.signal("order-2", "paid", {"n": 2}) is False
        assert (await engine.get("order-2")).id == first  # type: ignore[union-attr]
        # A newer row takes the key: it is the occupant, and get() prefers it.
        second = await engine.insert(Order, unique_key="order-2", state={"late": True})
        assert (await engine.get("order-2")).id == second  # type: ignore[union-attr]
        # The finished one: get() falls back to the most recently inserted carrier.
        assert await engine.signal("order-2", "paid", {"n": 3}) is True
        done = await engine.wait("order-2", timeout=20)
        assert done.id == second and done.result == {"paid": [{"n": 3}]}
        assert (await engine.get("order-2")).id == second  # type: ignore[union-attr]
        # The refused signal was never stored on the finished row (the first one may
        # remain: Done consumes only an awaited name, and the step may not have awaited).
        assert {"n": 2} not in [s.payload for s in await engine.inbox(first)]


async def test_an_occupant_in_a_scope_holding_done_is_finished_not_signalled(
    make_engine, conn, schema
) -> None:
    async with make_engine(queues={}) as engine:
        iid = await engine.insert(Order, unique_key="k", unique_scope=["runnable", "done"])
        await conn.execute(
            f"UPDATE \"{schema}\".gen_durable SET status = 'done' WHERE id = %s", (iid,)
        )
        assert await engine.signal("k", "paid") is False
    assert await count(conn, schema, "signals") == 0


@pytest.mark.parametrize(
    ("scope", "kind", "after"),
    [
        (None, "done", "done"),
        # Leaving the scope without finishing (a queueing lock that parks): the row
        # is alive, but it no longer occupies the key, so it must not get the signal.
        (["runnable", "executing"], "await", "awaiting_signal"),
    ],
)
async def test_an_occupant_leaving_its_key_during_the_delivery_gets_nothing(
    make_engine, dsn, schema, q, scope: Any, kind: str, after: str
) -> None:
    """The occupant's outcome holds the row lock; the delivery by key resolved it and
    waits; the outcome commits and frees the key; the delivery re-checks the key on the
    new row version and stores nothing (SPEC §20: resolution and delivery are one
    atomic unit)."""
    async with make_engine(queues={}) as engine:
        iid = await engine.insert(Order, unique_key="race", unique_scope=scope)
        async with (
            await psycopg.AsyncConnection.connect(dsn, autocommit=True) as finisher,
            await psycopg.AsyncConnection.connect(dsn, autocommit=True) as observer,
        ):
            claim = await claim_one(finisher, q, "node-f:1")
            assert claim[0] == iid
            await finisher.execute("BEGIN")
            outcome = {"awaits": "paid"} if kind == "await" else {}
            assert await complete(finisher, q, id=iid, token="node-f:1", kind=kind, **outcome) == [
                (iid, after)
            ]
            task = asyncio.ensure_future(engine.signal("race", "paid"))
            # The schema's name, not "signals": pg_stat_activity keeps only the start of
            # a long statement's text.
            await wait_lock_waiters(observer, schema)
            assert not task.done()
            await finisher.execute("COMMIT")
            assert await asyncio.wait_for(task, 30) is False
            assert await inbox(observer, schema, iid) == []
            row = await fetch(observer, schema, iid)
            assert row["status"] == after and row["unique_guard"] is None


@pytest.mark.parametrize("bad", [1.5, None, ["k"], {"k": 1}, False, object()])
async def test_a_key_of_the_wrong_type_is_refused_and_nothing_is_written(
    make_engine, conn, schema, dsn, bad: Any
) -> None:
    async with make_engine(queues={}) as engine:
        await engine.insert(Order, unique_key="k")
        for coro in (
            engine.signal(bad, "paid"),
            engine.signal(bad, "paid", start=start("k")),
            engine.get(bad),
            engine.wait(bad, timeout=0),
        ):
            with pytest.raises(gd.ConfigurationError, match="unique_key"):
                await coro
    with gd.SyncClient(dsn, schema=schema) as client:
        with pytest.raises(gd.ConfigurationError, match="unique_key"):
            client.signal(bad, "paid")
        with pytest.raises(gd.ConfigurationError, match="unique_key"):
            client.get(bad)
    assert await count(conn, schema, "signals") == 0
    assert await count(conn, schema, "gen_durable") == 1


# -- signal-with-start --------------------------------------------------------------------


async def test_signal_with_start_inserts_with_the_signal_when_nothing_occupies(
    make_engine, conn, schema
) -> None:
    async with make_engine(queues={}) as engine:
        spec = start("order-3", state={"from": "webhook"})
        assert await engine.signal("order-3", "paid", {"n": 1}, start=spec) is True
        [(iid, status)] = await rows_with_key(conn, schema, b"order-3")
        assert status == "runnable"
        assert [(s.name, s.payload) for s in await engine.inbox(iid)] == [("paid", {"n": 1})]
        # Occupied now: the next call delivers, it does not start another instance.
        assert await engine.signal("order-3", "paid", {"n": 2}, start=spec) is True
        assert await rows_with_key(conn, schema, b"order-3") == [(iid, "runnable")]
        assert len(await engine.inbox(iid)) == 2
        assert (await fetch(conn, schema, iid))["state"] == {"from": "webhook"}


async def test_signal_with_start_runs_the_started_instance_on_its_signal(make_engine) -> None:
    async with make_engine(queues={"default": 2}) as engine:
        assert await engine.signal("order-4", "paid", {"n": 1}, start=start("order-4")) is True
        done = await engine.wait("order-4", timeout=20)
        assert done.status == "done" and done.result == {"paid": [{"n": 1}]}
        # Finished: the key is free, so a late webhook starts a fresh instance.
        assert await engine.signal("order-4", "paid", {"n": 2}, start=start("order-4")) is True
        again = await engine.wait("order-4", timeout=20)
        assert again.id != done.id and again.result == {"paid": [{"n": 2}]}


@pytest.mark.parametrize(
    ("target", "spec", "match"),
    [
        ("k", gd.Spec(Order), "must carry unique_key"),
        ("k", start("other"), "must be the same key"),
        (7, start("k"), "needs the signal addressed to a unique_key"),
        ("k", start("k", unique_scope=["executing"]), "does not hold 'runnable'"),
        ("k", Order, "must be a gd.Spec"),
        ("k", start("k", queue=3), "queue"),
    ],
)
async def test_signal_with_start_refuses_a_bad_start_and_writes_nothing(
    make_engine, conn, schema, target: Any, spec: Any, match: str
) -> None:
    async with make_engine(queues={}) as engine:
        with pytest.raises(gd.GenDurableError, match=match):
            await engine.signal(target, "paid", start=spec)
    assert await count(conn, schema, "gen_durable") == 0
    assert await count(conn, schema, "signals") == 0


@pytest.mark.parametrize(
    ("end", "inbox_of_winner"),
    [("COMMIT", [{"by": "a"}, {"by": "b"}]), ("ROLLBACK", [{"by": "b"}])],
)
async def test_two_signal_with_starts_forced_to_race_end_in_one_instance(
    make_engine, dsn, schema, end: str, inbox_of_winner: list[Any]
) -> None:
    """A holds its signal-with-start's insert uncommitted; B's insert of the same key
    waits on it. A commits: B's insert inserts nothing and B delivers to A's row. A
    rolls back: B's insert goes through and B's instance holds B's signal alone."""
    async with (
        make_engine(queues={}) as engine,
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as a,
        await psycopg.AsyncConnection.connect(dsn, autocommit=True) as observer,
    ):
        await a.execute("BEGIN")
        assert await engine.signal("race", "paid", {"by": "a"}, start=start("race"), conn=a)
        b = asyncio.ensure_future(engine.signal("race", "paid", {"by": "b"}, start=start("race")))
        await wait_lock_waiters(observer, "gen_durable")
        assert not b.done()
        await a.execute(end)
        assert await asyncio.wait_for(b, 30) is True
        [(iid, _)] = await rows_with_key(observer, schema, b"race")
        assert [s.payload for s in await engine.inbox(iid)] == inbox_of_winner


async def test_signal_with_start_hammered_on_one_key_keeps_every_signal(
    make_engine, dsn, schema, conn
) -> None:
    calls = 40
    async with make_engine(queues={}, pool_size=10) as engine:
        got = await asyncio.gather(
            *(engine.signal("hot", "paid", {"n": i}, start=start("hot")) for i in range(calls))
        )

        def sync_calls() -> list[bool]:
            with gd.SyncClient(dsn, schema=schema) as client:
                return [
                    client.signal("hot", "paid", {"n": calls + i}, start=start("hot"))
                    for i in range(5)
                ]

        got += await asyncio.gather(*(asyncio.to_thread(sync_calls) for _ in range(2)))
        assert got[:calls] == [True] * calls and got[calls:] == [[True] * 5] * 2
        [(iid, _)] = await rows_with_key(conn, schema, b"hot")
        seen = sorted(s.payload["n"] for s in await engine.inbox(iid))
        assert seen == sorted(list(range(calls)) + [calls + i for i in range(5)] * 2)


def test_sync_client_signal_with_start_and_get(dsn, schema) -> None:
    with gd.SyncClient(dsn, schema=schema) as client:
        assert client.signal("s-1", "paid", {"n": 1}, start=start("s-1")) is True
        inst = client.get("s-1")
        assert inst is not None and inst.unique_key == b"s-1"
        assert [s.payload for s in client.inbox(inst.id)] == [{"n": 1}]
        with pytest.raises(gd.NoSuchInstance):
            client.signal("s-404", "paid")


# -- the migration increment --------------------------------------------------------------


async def test_a_database_one_version_back_migrates_with_keyed_instances_in_flight(
    dsn: str,
) -> None:
    fresh = "t_" + uuid.uuid4().hex[:12]
    try:
        await gd.migrate(dsn, schema=fresh, version=KEYS_VERSION - 1)
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as c:
            await c.execute(
                f'INSERT INTO "{fresh}".gen_durable (fsm, step, status, awaits, unique_key, '
                "unique_scope, unique_guard) VALUES ('tests.keys.Order', 'start', "
                "'awaiting_signal', 'paid', 'old', "
                "'{runnable,executing,awaiting_signal,awaiting_children}', 'old')"
            )
        assert await gd.migrate(dsn, schema=fresh) == gd.LATEST_VERSION
        engine = gd.Engine(dsn, schema=fresh, queues={"default": 2}, poll_interval=0.05)
        async with engine:
            assert await engine.signal("old", "paid", {"n": 1}) is True
            done = await engine.wait("old", timeout=20)
            assert done.result == {"paid": [{"n": 1}]}
            assert await engine.signal("old", "paid") is False
        await gd.migrate_down(dsn, schema=fresh, version=KEYS_VERSION - 1)
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as c:
            cur = await c.execute(
                "SELECT count(*) FROM pg_indexes WHERE schemaname = %s AND indexname = %s",
                (fresh, "gen_durable_key"),
            )
            assert (await cur.fetchone()) == (0,)
    finally:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as c:
            await c.execute(f'DROP SCHEMA IF EXISTS "{fresh}" CASCADE')
