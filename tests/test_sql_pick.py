"""Pick, heartbeat, reaper and release against real PostgreSQL (SPEC §8, §9, §18.2, §18.8)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json

import psycopg
import pytest

from gen_durable._db.queries import PICK_WALK, Queries

from .sqlhelp import (
    backend_pid,
    claim,
    complete,
    connections,
    fetch,
    insert,
    run,
    set_columns,
    signal,
    wait_blocked,
)


@pytest.fixture(params=["pick", "pick_plain"])
def q(request: pytest.FixtureRequest, schema: str) -> Queries:
    """Every test here runs with the full pick and with the plain one: for rows without
    a rate limit or K > 1 they must claim exactly the same (SPEC §23)."""
    queries = Queries(schema)
    if request.param == "pick_plain":
        queries.pick = queries.pick_plain  # type: ignore[method-assign]
    return queries


def _ago(seconds: float) -> dt.datetime:
    return dt.datetime.now(dt.UTC) - dt.timedelta(seconds=seconds)


async def test_pick_claims_one_queue_by_priority_then_eligible_at(conn, q, schema) -> None:
    specs = [
        {"step": "late-p0", "priority": 0, "eligible_at": _ago(10)},
        {"step": "early-p0", "priority": 0, "eligible_at": _ago(30)},
        {"step": "p-5", "priority": -5, "eligible_at": _ago(1)},
        {"step": "p3", "priority": 3, "eligible_at": _ago(60)},
        {"step": "other-queue", "queue": "other", "priority": -9, "eligible_at": _ago(99)},
    ]
    ids = dict(zip([s["step"] for s in specs], await insert(conn, q, *specs), strict=True))
    order = []
    for i in range(5):
        got = await claim(conn, q, f"node-a:{i}", limit=1)
        order += [r[3] for r in got]
    assert order == ["p-5", "early-p0", "late-p0", "p3"]
    other = await fetch(conn, schema, ids["other-queue"])
    assert other["status"] == "runnable"
    assert [r[3] for r in await claim(conn, q, "node-b:1", queue="other")] == ["other-queue"]


async def test_pick_sets_the_claim_columns_and_returns_what_the_executor_needs(
    conn, q, schema
) -> None:
    (iid,) = await insert(conn, q, {"state": '{"k": "v"}', "priority": 2, "partition_key": "p"})
    before = await fetch(conn, schema, iid)
    (row,) = await claim(conn, q, "node-a:7", ttl=45)
    after = await fetch(conn, schema, iid)
    assert row[:9] == (iid, "tests.Machine", 1, "start", '{"k": "v"}', 0, None, 2, "p")
    assert row[9] is None and row[10] is None  # empty inbox, no children
    assert after["status"] == "executing" and after["locked_by"] == "node-a:7"
    assert after["lease_expires_at"] == after["updated_at"] + dt.timedelta(seconds=45)
    for column in ("step", "state", "attempt", "eligible_at", "awaits", "queue", "priority"):
        assert after[column] == before[column], column


async def test_pick_limit_and_future_rows(conn, q, schema) -> None:
    await insert(conn, q, *({} for _ in range(5)))
    (future,) = await insert(conn, q, {"delay": 60.0})
    assert len(await claim(conn, q, "node-a:1", limit=3)) == 3
    assert len(await claim(conn, q, "node-a:2", limit=10)) == 2
    assert await claim(conn, q, "node-a:3") == []
    row = await fetch(conn, schema, future)
    assert row["status"] == "runnable" and row["eligible_at"] > row["inserted_at"]


async def test_pick_walks_priorities_past_delayed_and_locked_rows(dsn, conn, q, schema) -> None:
    """The pick visits priorities one at a time (queries.py, `prio`): rows delayed at a
    more urgent priority, and a priority whose only eligible row is locked, must not
    stop it from filling the batch from the next priorities, in (priority, eligible_at)
    order."""
    specs = [
        {"step": "delayed-1", "priority": -1, "delay": 600.0},
        {"step": "delayed-2", "priority": -1, "delay": 900.0},
        {"step": "p0-locked", "priority": 0, "eligible_at": _ago(50)},
        {"step": "p1-new", "priority": 1, "eligible_at": _ago(5)},
        {"step": "p1-old", "priority": 1, "eligible_at": _ago(40)},
        {"step": "p2", "priority": 2, "eligible_at": _ago(90)},
        {"step": "p3", "priority": 3, "eligible_at": _ago(99)},
    ]
    ids = dict(zip([s["step"] for s in specs], await insert(conn, q, *specs), strict=True))
    async with connections(dsn, 1) as (other,), other.transaction():
        await other.execute(
            f'SELECT 1 FROM "{schema}".gen_durable WHERE id = %s FOR NO KEY UPDATE',
            (ids["p0-locked"],),
        )
        got = await asyncio.wait_for(claim(conn, q, "node-a:1", limit=3), 10)
        assert sorted(r[3] for r in got) == ["p1-new", "p1-old", "p2"]
        assert [r[3] for r in await claim(conn, q, "node-a:2", limit=10)] == ["p3"]
    assert [r[3] for r in await claim(conn, q, "node-a:3", limit=10)] == ["p0-locked"]
    for step in ("delayed-1", "delayed-2"):
        assert (await fetch(conn, schema, ids[step]))["status"] == "runnable"


async def test_pick_past_its_priority_walk_scans_the_rest_in_order(conn, q, schema) -> None:
    """More distinct priorities than PICK_WALK: the walk stops and the rest of the queue
    is taken by one scan, still in (priority, eligible_at) order."""
    delayed = [{"step": f"delayed{p}", "priority": p, "delay": 600.0} for p in range(-40, 0)]
    await insert(conn, q, *delayed)
    await insert(
        conn,
        q,
        {"step": "p5", "priority": 5, "eligible_at": _ago(90)},
        {"step": "p3-new", "priority": 3, "eligible_at": _ago(5)},
        {"step": "p3-old", "priority": 3, "eligible_at": _ago(40)},
    )
    assert PICK_WALK < 40  # the eligible rows lie past the walk
    assert [r[3] for r in await claim(conn, q, "node-a:1", limit=1)] == ["p3-old"]
    assert [r[3] for r in await claim(conn, q, "node-a:2", limit=1)] == ["p3-new"]
    assert [r[3] for r in await claim(conn, q, "node-a:3", limit=10)] == ["p5"]
    assert await claim(conn, q, "node-a:4", limit=10) == []


async def test_pick_skips_rows_locked_by_another_transaction(dsn, conn, q, schema) -> None:
    first, second = await insert(conn, q, {"eligible_at": _ago(20)}, {"eligible_at": _ago(10)})
    async with connections(dsn, 1) as (other,), other.transaction():
        await other.execute(
            f'SELECT 1 FROM "{schema}".gen_durable WHERE id = %s FOR NO KEY UPDATE', (first,)
        )
        got = await asyncio.wait_for(claim(conn, q, "node-a:1"), 10)  # skips, never waits
        assert [r[0] for r in got] == [second]
    assert (await fetch(conn, schema, first))["status"] == "runnable"
    assert [r[0] for r in await claim(conn, q, "node-a:2")] == [first]


async def test_pick_neither_waits_on_nor_skips_a_key_share_lock(dsn, conn, q, schema) -> None:
    """§18.8: a signal insert's foreign-key check holds KEY SHARE on its target; the
    claim (FOR NO KEY UPDATE) must still take the row."""
    (iid,) = await insert(conn, q)
    async with connections(dsn, 1) as (other,), other.transaction():
        await other.execute(
            f"INSERT INTO \"{schema}\".signals (target_id, name) VALUES (%s, 'fk')", (iid,)
        )
        got = await asyncio.wait_for(claim(conn, q, "node-a:1"), 10)
        assert [r[0] for r in got] == [iid]


async def test_pick_takes_one_row_per_partition_key_the_most_urgent(conn, q, schema) -> None:
    specs = [
        {"step": "a-late", "partition_key": "a", "eligible_at": _ago(10)},
        {"step": "a-first", "partition_key": "a", "eligible_at": _ago(50)},
        {"step": "a-prio", "partition_key": "a", "priority": -1, "eligible_at": _ago(1)},
        {"step": "b-only", "partition_key": "b", "eligible_at": _ago(5)},
        {"step": "free-1", "eligible_at": _ago(5)},
        {"step": "free-2", "eligible_at": _ago(5)},
    ]
    ids = dict(zip([s["step"] for s in specs], await insert(conn, q, *specs), strict=True))
    untouched = {k: await fetch(conn, schema, ids[k]) for k in ("a-late", "a-first")}
    got = await claim(conn, q, "node-a:1", limit=10)
    assert sorted(r[3] for r in got) == ["a-prio", "b-only", "free-1", "free-2"]
    # Rows skipped for their key stay runnable and are not bounced.
    for k, before in untouched.items():
        assert await fetch(conn, schema, ids[k]) == before
    # While `a` executes, no other `a` row is picked.
    assert await claim(conn, q, "node-a:2") == []
    await complete(conn, q, id=ids["a-prio"], token="node-a:1", kind="done")
    assert [r[3] for r in await claim(conn, q, "node-a:3")] == ["a-first"]


async def test_unique_index_refuses_a_second_executing_row_for_a_key(conn, q, schema) -> None:
    a1, a2 = await insert(conn, q, {"partition_key": "a"}, {"partition_key": "a"})
    await claim(conn, q, "node-a:1", limit=1)
    held = a1 if (await fetch(conn, schema, a1))["status"] == "executing" else a2
    other = a2 if held == a1 else a1
    with pytest.raises(psycopg.errors.UniqueViolation):
        await set_columns(
            conn,
            schema,
            other,
            status="executing",
            locked_by="rogue:1",
            lease_expires_at=_ago(-60),
        )
    assert (await fetch(conn, schema, other))["status"] == "runnable"


async def test_racing_picks_of_one_key_the_second_fails_on_the_unique_index(
    dsn, conn, q, schema
) -> None:
    """The unique index on executing keys is the backstop behind the pick's probes:
    another node makes the key's *later* row executing but has not committed when
    this pick claims the head. The probe cannot see the uncommitted claim, so the
    index must refuse the second executing row of the key."""
    _, later = await insert(conn, q, {"partition_key": "k"}, {"partition_key": "k"})
    async with connections(dsn, 2, autocommit=False) as (a, b):
        pid_b = await backend_pid(b)
        await b.commit()
        await a.execute(
            f"UPDATE \"{schema}\".gen_durable SET status = 'executing', "
            "locked_by = 'node-a:1', lease_expires_at = now() + interval '1 minute' "
            "WHERE id = %s",
            (later,),
        )  # uncommitted
        racing = asyncio.create_task(claim(b, q, "node-b:1"))
        await wait_blocked(conn, pid_b)  # on the index entry of a's claim
        await a.commit()
        with pytest.raises(psycopg.errors.UniqueViolation):
            await racing
        await b.rollback()
    executing = await (
        await conn.execute(
            f"SELECT id, locked_by FROM \"{schema}\".gen_durable WHERE status = 'executing'"
        )
    ).fetchall()
    assert executing == [(later, "node-a:1")]


async def test_a_locked_head_of_a_key_is_not_overtaken(dsn, conn, q, schema) -> None:
    """A client transaction holds the key's head row (a signal delivered inside its
    own open transaction): SKIP LOCKED skips it, and the key's next row must not run
    ahead of it (SPEC §9, order within a key)."""
    head, _ = await insert(conn, q, {"partition_key": "k"}, {"partition_key": "k"})
    async with connections(dsn, 1, autocommit=False) as (holder,):
        await holder.execute(
            f'SELECT 1 FROM "{schema}".gen_durable WHERE id = %s FOR NO KEY UPDATE', (head,)
        )
        assert await claim(conn, q, "node-a:1") == []
        await holder.rollback()
    (row,) = await claim(conn, q, "node-a:2", limit=10)
    assert row[0] == head


async def test_pick_returns_inbox_and_children_with_the_claim(conn, q, schema) -> None:
    (iid,) = await insert(conn, q)
    _, s1, _ = await signal(conn, q, iid, "a", '{"x": 1}')
    _, s2, _ = await signal(conn, q, iid, "b")
    kids = await insert(
        conn, q, {"parent_id": iid, "queue": "kids"}, {"parent_id": iid, "queue": "kids"}
    )
    (row,) = await claim(conn, q, "node-a:1")
    assert json.loads(row[9]) == [[s1, "a", {"x": 1}], [s2, "b", {}]]
    childs = json.loads(row[10])
    assert [c[:3] for c in childs] == [[k, "tests.Machine", "runnable"] for k in kids]
    assert childs[0][3:] == [{"n": 0}, None, None]


# -- heartbeat -----------------------------------------------------------------------


async def test_heartbeat_extends_only_the_pairs_still_held(dsn, conn, q, schema) -> None:
    mine, stolen, idle, busy = await insert(
        conn, q, *({"eligible_at": _ago(40 - i * 10)} for i in range(4))
    )
    await set_columns(conn, schema, idle, queue="elsewhere")
    await claim(conn, q, "node-a:1", limit=2)  # mine, stolen (oldest first)
    await claim(conn, q, "node-a:2", limit=1)  # busy
    # `stolen` was reaped and re-claimed by another node meanwhile.
    await set_columns(conn, schema, stolen, locked_by="node-b:9")
    before = {i: await fetch(conn, schema, i) for i in (mine, stolen, idle, busy)}
    async with connections(dsn, 1) as (other,), other.transaction():
        # A row being committed elsewhere is skipped, never waited for.
        await other.execute(
            f'SELECT 1 FROM "{schema}".gen_durable WHERE id = %s FOR NO KEY UPDATE', (busy,)
        )
        got = await asyncio.wait_for(
            run(
                conn,
                q.heartbeat(
                    [mine, stolen, idle, busy],
                    ["node-a:1", "node-a:1", "node-a:1", "node-a:2"],
                    300,
                ),
            ),
            10,
        )
    assert got == [(mine,)]
    after = await fetch(conn, schema, mine)
    assert after["lease_expires_at"] > before[mine]["lease_expires_at"] + dt.timedelta(seconds=200)
    assert after["locked_by"] == "node-a:1" and after["status"] == "executing"
    for i in (stolen, idle, busy):
        assert await fetch(conn, schema, i) == before[i]


# -- reaper --------------------------------------------------------------------------


async def test_reaper_returns_only_expired_rows_with_attempt_plus_one(conn, q, schema) -> None:
    expired = await insert(conn, q, {}, {})
    await claim(conn, q, "node-dead:1", ttl=-1)
    (alive,) = await insert(conn, q)
    await claim(conn, q, "node-live:1", ttl=300)
    (waiting,) = await insert(conn, q)
    before_alive = await fetch(conn, schema, alive)
    before_waiting = await fetch(conn, schema, waiting)
    await set_columns(conn, schema, expired[0], attempt=4)

    got = await run(conn, q.reap(100, crash_limit=10))
    assert sorted(r[0] for r in got) == expired
    for iid, attempt in zip(expired, (5, 1), strict=True):
        row = await fetch(conn, schema, iid)
        assert row["status"] == "runnable" and row["attempt"] == attempt
        assert row["locked_by"] is None and row["lease_expires_at"] is None
        assert row["eligible_at"] == row["updated_at"]
    assert await fetch(conn, schema, alive) == before_alive
    assert await fetch(conn, schema, waiting) == before_waiting
    assert await run(conn, q.reap(100, crash_limit=10)) == []


async def test_reaper_batch_limit_takes_the_oldest_leases_first(conn, q, schema) -> None:
    ids = await insert(conn, q, {}, {}, {})
    await claim(conn, q, "node-dead:1", ttl=-1)
    for i, iid in enumerate(ids):
        await set_columns(conn, schema, iid, lease_expires_at=_ago(100 - i * 10))
    assert sorted(r[0] for r in await run(conn, q.reap(2, crash_limit=10))) == ids[:2]
    assert [r[0] for r in await run(conn, q.reap(2, crash_limit=10))] == ids[2:]


# -- release -------------------------------------------------------------------------


@pytest.mark.parametrize(("bump", "delay"), [(False, 0.0), (True, 0.0), (False, 30.0)])
async def test_release_hands_claimed_rows_back(conn, q, schema, bump, delay) -> None:
    held, foreign = await insert(conn, q, {"eligible_at": _ago(50)}, {"eligible_at": _ago(40)})
    await set_columns(conn, schema, held, attempt=2)
    await claim(conn, q, "node-a:1")
    before = await fetch(conn, schema, held)
    before_foreign = await fetch(conn, schema, foreign)
    got = await run(conn, q.release([held, foreign], ["node-a:1", "node-x:1"], delay, bump=bump))
    assert got == [(held,)]
    row = await fetch(conn, schema, held)
    assert row["status"] == "runnable"
    assert row["locked_by"] is None and row["lease_expires_at"] is None
    assert row["attempt"] == (3 if bump else 2)
    if delay:
        assert row["eligible_at"] == row["updated_at"] + dt.timedelta(seconds=delay)
    else:
        assert row["eligible_at"] == before["eligible_at"]
    assert row["state"] == before["state"] and row["step"] == before["step"]
    assert await fetch(conn, schema, foreign) == before_foreign


async def test_lease_statements_match_tokens_with_any_characters(conn, q, schema) -> None:
    (iid,) = await insert(conn, q)
    token = 'host "a" \\ ö\n:1'
    await claim(conn, q, token)
    assert await run(conn, q.heartbeat([iid], [token], 60)) == [(iid,)]
    assert await run(conn, q.lock_claimed([iid], [token])) == [(iid,)]
    assert await run(conn, q.release([iid], [token.upper()])) == []
    assert await run(conn, q.release([iid], [token])) == [(iid,)]
    assert (await fetch(conn, schema, iid))["status"] == "runnable"
