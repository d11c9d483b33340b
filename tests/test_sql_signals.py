"""Signal delivery, the await park and inbox consumption (SPEC §6, §18.1, §18.5, §18.9).

The lost wake-up tests force each interleaving of "deliver" against "park" with two
connections and explicit transactions: one side holds the row lock, ``pg_locks`` shows
the other side waiting, then the first commits. No interleaving may leave the instance
parked while a matching signal sits unseen in its inbox.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

import gen_durable as gd
from gen_durable._db.queries import CompleteBatch, Queries
from gen_durable._runtime.completer import Completer, Completion
from gen_durable._runtime.stats import Stats

from .sqlhelp import (
    backend_pid,
    claim_one,
    complete,
    connections,
    count,
    fetch,
    inbox,
    insert,
    run,
    scalar,
    signal,
    wait_blocked,
    wait_lock_waiters,
)

TOKEN = "node-a:1"


def _seen(claim_row: tuple[Any, ...]) -> list[int]:
    """Signal ids in the inbox snapshot the pick returned with the claim."""
    return [s[0] for s in json.loads(claim_row[9] or "[]")]


async def _parked(conn: Any, q: Queries, name: str) -> int:
    """An instance parked on ``name`` (awaiting_signal)."""
    (iid,) = await insert(conn, q)
    await claim_one(conn, q, "node-z:1")
    assert await complete(conn, q, id=iid, token="node-z:1", kind="await", awaits=name) == [
        (iid, "awaiting_signal")
    ]
    return iid


# -- delivery --------------------------------------------------------------------------


async def test_matching_signal_wakes_and_leaves_awaits_set(conn, q, schema) -> None:
    iid = await _parked(conn, q, "go")
    status, sid, woke = await signal(conn, q, iid, "go", '{"amount": 10}')
    assert (status, woke) == ("awaiting_signal", True) and sid is not None
    row = await fetch(conn, schema, iid)
    assert (row["status"], row["awaits"]) == ("runnable", ["go"])
    assert row["eligible_at"] == row["updated_at"]
    assert await inbox(conn, schema, iid) == [(sid, "go")]
    payload = await scalar(conn, f'SELECT payload FROM "{schema}".signals WHERE id = %s', sid)
    assert payload == {"amount": 10}


async def test_non_matching_signal_wakes_nobody_and_waits_in_the_inbox(conn, q, schema) -> None:
    iid = await _parked(conn, q, "go")
    before = await fetch(conn, schema, iid)
    status, sid, woke = await signal(conn, q, iid, "other")
    assert (status, woke) == ("awaiting_signal", False) and sid is not None
    assert await fetch(conn, schema, iid) == before
    # A never-awaiting (runnable) instance just stores it too.
    (plain,) = await insert(conn, q)
    before = await fetch(conn, schema, plain)
    status, sid2, woke = await signal(conn, q, plain, "go")
    assert (status, woke) == ("runnable", False) and sid2 is not None
    assert await fetch(conn, schema, plain) == before
    assert await inbox(conn, schema, plain) == [(sid2, "go")]


@pytest.mark.parametrize("kind", ["done", "stop"])
async def test_signal_to_terminal_instance_is_refused(dsn, conn, q, schema, kind) -> None:
    (iid,) = await insert(conn, q)
    await claim_one(conn, q, TOKEN)
    await complete(conn, q, id=iid, token=TOKEN, kind=kind, result="1", error="e")
    status, sid, woke = await signal(conn, q, iid, "late")
    assert status == ("done" if kind == "done" else "failed")
    assert sid is None and woke is False
    assert await count(conn, schema, "signals") == 0
    with gd.SyncClient(dsn, schema=schema) as client:
        assert client.signal(iid, "late", {"x": 1}) is False
    assert await count(conn, schema, "signals") == 0


async def test_signal_to_missing_id_returns_no_row_and_client_raises(dsn, conn, q, schema) -> None:
    assert await signal(conn, q, 987654, "go") is None
    assert await count(conn, schema, "signals") == 0
    with gd.SyncClient(dsn, schema=schema) as client:
        with pytest.raises(gd.NoSuchInstance) as err:
            client.signal(987654, "go")
        assert err.value.instance_id == 987654
        (iid,) = await insert(conn, q)
        assert client.signal(iid, "go", {"a": 1}) is True
    assert await count(conn, schema, "signals") == 1


async def test_dedup_key_stores_once(dsn, conn, q, schema) -> None:
    (iid,) = await insert(conn, q)
    _, first, _ = await signal(conn, q, iid, "hook", '{"n": 1}', dedup_key="evt-1")
    _, again, _ = await signal(conn, q, iid, "hook", '{"n": 2}', dedup_key="evt-1")
    assert first is not None and again is None
    with gd.SyncClient(dsn, schema=schema) as client:  # a redelivery is still a success
        assert client.signal(iid, "hook", {"n": 3}, dedup_key="evt-1") is True
        assert client.signal(iid, "hook", {"n": 4}, dedup_key="evt-2") is True
    # Without a dedup_key every delivery is stored; the key is per target.
    await signal(conn, q, iid, "hook")
    await signal(conn, q, iid, "hook")
    (other,) = await insert(conn, q)
    assert (await signal(conn, q, other, "hook", dedup_key="evt-1"))[1] is not None
    assert len(await inbox(conn, schema, iid)) == 4
    payload = await scalar(conn, f'SELECT payload FROM "{schema}".signals WHERE id = %s', first)
    assert payload == {"n": 1}


# -- consumption (§6) -------------------------------------------------------------


async def test_progressing_outcome_consumes_only_seen_signals_of_the_awaited_name(
    conn, q, schema
) -> None:
    iid = await _parked(conn, q, "go")
    await signal(conn, q, iid, "other")
    await signal(conn, q, iid, "go")
    await signal(conn, q, iid, "go")
    claimed = await claim_one(conn, q, TOKEN)
    seen = _seen(claimed)
    assert [s[1] for s in json.loads(claimed[9])] == ["other", "go", "go"]
    assert claimed[6] == ["go"]  # awaits: the name it was woken by
    # Lands while the step runs: not in the snapshot, so it must survive.
    _, unseen, _ = await signal(conn, q, iid, "go")
    got = await complete(
        conn, q, id=iid, token=TOKEN, kind="next", step="after", consume="go", seen=seen
    )
    assert got == [(iid, "runnable")]
    assert [name for _, name in await inbox(conn, schema, iid)] == ["other", "go"]
    assert (await inbox(conn, schema, iid))[1][0] == unseen
    assert (await fetch(conn, schema, iid))["awaits"] is None


async def test_await_consumes_nothing(conn, q, schema) -> None:
    iid = await _parked(conn, q, "go")
    await signal(conn, q, iid, "go")
    claimed = await claim_one(conn, q, TOKEN)
    got = await complete(
        conn, q, id=iid, token=TOKEN, kind="await", awaits="more", seen=_seen(claimed)
    )
    assert got == [(iid, "awaiting_signal")]
    assert [name for _, name in await inbox(conn, schema, iid)] == ["go"]


# -- re-await guard (§18.5) and the park re-check (§18.1) ---------------------------


async def test_await_on_an_already_seen_signal_parks_until_a_new_one(conn, q, schema) -> None:
    iid = await _parked(conn, q, "go")
    await signal(conn, q, iid, "go")
    claimed = await claim_one(conn, q, TOKEN)
    assert len(_seen(claimed)) == 1
    # The step saw `go` and waits for a second one: it must park, not spin.
    await run(conn, q.lock_claimed([iid], [TOKEN]))
    got = await complete(
        conn, q, id=iid, token=TOKEN, kind="await", awaits="go", seen=_seen(claimed)
    )
    assert got == [(iid, "awaiting_signal")]
    assert await run(conn, q.pick("default", 10, "node-x:1", 30)) == []
    # A new, unseen `go` wakes it.
    _, _, woke = await signal(conn, q, iid, "go")
    assert woke is True
    claimed = await claim_one(conn, q, "node-a:2")
    assert [s[1] for s in json.loads(claimed[9])] == ["go", "go"]


async def test_await_with_an_unseen_matching_signal_commits_runnable(conn, q, schema) -> None:
    """Delivered while executing (flips nothing); the park re-check sees it."""
    (iid,) = await insert(conn, q)
    claimed = await claim_one(conn, q, TOKEN)
    assert _seen(claimed) == []
    status, _, woke = await signal(conn, q, iid, "go")
    assert (status, woke) == ("executing", False)
    assert (await fetch(conn, schema, iid))["status"] == "executing"
    # A signal of another name does not count.
    await signal(conn, q, iid, "other")
    got = await complete(conn, q, id=iid, token=TOKEN, kind="await", awaits="go", seen=[])
    assert got == [(iid, "runnable")]
    row = await fetch(conn, schema, iid)
    assert (row["status"], row["awaits"]) == ("runnable", ["go"])


INTERLEAVINGS = [
    "delivered_before_park",  # committed before the park starts
    "delivery_holds_lock",  # uncommitted delivery holds the row; the park waits
    "park_locked",  # park holds the row lock, before its re-check; delivery waits
    "park_rechecked",  # park re-checked (found nothing), uncommitted; delivery waits
    "park_committed",  # delivery after the park committed
]


@pytest.mark.parametrize("order", INTERLEAVINGS)
async def test_no_lost_wakeup_under_forced_interleaving(dsn, conn, q, schema, order) -> None:
    (iid,) = await insert(conn, q)
    await claim_one(conn, q, TOKEN)
    lock = q.lock_claimed([iid], [TOKEN])
    batch = CompleteBatch.empty()
    batch.add(id=iid, token=TOKEN, kind="await", awaits="go")
    park = q.complete(batch)
    deliver = q.signal(iid, "go", '{"late": true}', None)
    async with connections(dsn, 2, autocommit=False) as (a, b):
        pid_a, pid_b = await backend_pid(a), await backend_pid(b)
        await a.commit()
        await b.commit()
        pending: asyncio.Task[Any] | None = None
        if order == "delivered_before_park":
            await run(b, deliver)
            await b.commit()
            await run(a, lock)
        elif order == "delivery_holds_lock":
            assert (await run(b, deliver))[0][0] == "executing"
            locking = asyncio.create_task(run(a, lock))
            await wait_blocked(conn, pid_a)
            await b.commit()
            assert await locking == [(iid,)]
        else:
            assert await run(a, lock) == [(iid,)]
        if order == "park_locked":
            pending = asyncio.create_task(run(b, deliver))
            await wait_blocked(conn, pid_b)
        parked = [(r[0], r[1]) for r in await run(a, park)]
        if order == "park_rechecked":
            pending = asyncio.create_task(run(b, deliver))
            await wait_blocked(conn, pid_b)
        await a.commit()
        if pending is not None:
            (delivered,) = await pending
            await b.commit()
            assert delivered[0] == "awaiting_signal" and delivered[2] is True
        if order == "park_committed":
            assert (await run(b, deliver))[0][2] is True
            await b.commit()
    early = order in ("delivered_before_park", "delivery_holds_lock")
    assert parked == [(iid, "runnable" if early else "awaiting_signal")]
    row = await fetch(conn, schema, iid)
    assert (row["status"], row["awaits"], row["locked_by"]) == ("runnable", ["go"], None)
    assert [name for _, name in await inbox(conn, schema, iid)] == ["go"]


async def test_completer_park_waits_for_an_open_delivery_and_sees_it(dsn, conn, q, schema) -> None:
    """The runtime's own flush (lock, then re-check in a new statement) under the
    "delivery holds the lock" interleaving, the one a single-statement park loses."""
    (iid,) = await insert(conn, q)
    await claim_one(conn, q, TOKEN)
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        dsn, min_size=1, max_size=2, kwargs={"autocommit": True}, open=False
    )
    await pool.open()
    try:
        completer = Completer(pool, q, Stats())
        async with connections(dsn, 1, autocommit=False) as (b,):
            assert (await run(b, q.signal(iid, "go", "{}", None)))[0][0] == "executing"
            item = Completion(iid, TOKEN, "await", awaits="go")
            flush = asyncio.create_task(completer.commit(item))
            await wait_lock_waiters(conn, schema)
            await b.commit()
            await asyncio.wait_for(flush, 30)
    finally:
        await pool.close()
    assert (await fetch(conn, schema, iid))["status"] == "runnable"


# -- nudges (LISTEN/NOTIFY) --------------------------------------------------------


async def _notes(dsn: str, q: Queries, action: Any) -> list[str]:
    """Payloads notified on the schema's channel while ``action()`` runs."""
    async with connections(dsn, 1) as (listener,):
        await listener.execute(q.listen().query)
        await action()
        # A marker sent last: everything before it has been delivered once it arrives.
        await listener.execute("SELECT pg_notify(%s, '--end--')", (q.channel,))
        got = []
        async for note in listener.notifies(timeout=30):
            if note.payload == "--end--":
                break
            assert note.channel == q.channel
            got.append(note.payload)
    return got


async def test_inserts_and_wakes_nudge_their_queue_once(dsn, conn, q, schema) -> None:
    async def inserts() -> None:
        await insert(conn, q, {"queue": "a"}, {"queue": "a"}, {"queue": "b"}, {"queue": "a"})

    assert sorted(await _notes(dsn, q, inserts)) == ["a", "b"]
    iid = await _parked(conn, q, "go")
    await run(conn, q.pick("a", 10, "node-x:1", 30))
    await run(conn, q.pick("b", 10, "node-x:1", 30))

    async def deliveries() -> None:
        await signal(conn, q, iid, "other")  # no wake, no nudge
        await signal(conn, q, iid, "go")

    assert await _notes(dsn, q, deliveries) == ["default"]
