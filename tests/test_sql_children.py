"""Children insert + park and the join decrement (SPEC §7, §18.2).

The concurrency test holds the parent's row lock from a third connection while every
sibling's terminal commit is started on its own connection, waits (``pg_locks``) until
all of them are queued on that lock, then lets them go at once.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from gen_durable._db.queries import CompleteBatch, Queries

from .sqlhelp import (
    backend_pid,
    claim,
    claim_one,
    complete,
    complete_batch,
    connections,
    count,
    fan_out,
    fetch,
    insert,
    rows,
    run,
    schedule,
    signal,
    wait_blocked,
)

N = 8


async def _fan_out(conn: Any, q: Queries, n: int, **child: Any) -> tuple[int, list[int]]:
    return await fan_out(conn, q, n, state='{"fanned": true}', **child)


async def test_children_are_inserted_and_parent_parks_atomically(conn, q, schema) -> None:
    parent, kids = await _fan_out(conn, q, 3)
    assert len(kids) == 3 and kids == sorted(kids)
    p = await fetch(conn, schema, parent)
    assert (p["status"], p["children_pending"], p["step"]) == ("awaiting_children", 3, "join")
    # The pick returns the children with the claim of the parent, ordered by id.
    claimed = await claim(conn, q, "node-c:1")
    assert sorted(r[0] for r in claimed) == kids


async def test_zero_children_sends_parent_straight_to_runnable(conn, q, schema) -> None:
    parent, kids = await _fan_out(conn, q, 0)
    assert kids == []
    p = await fetch(conn, schema, parent)
    assert (p["status"], p["children_pending"], p["step"]) == ("runnable", 0, "join")
    assert p["eligible_at"] == p["updated_at"]


async def test_children_all_dropped_by_uniqueness_count_as_zero(conn, q, schema) -> None:
    scope = "{runnable,executing,awaiting_signal,awaiting_children}"
    await insert(conn, q, {"unique_key": b"k", "unique_scope": scope, "queue": "other"})
    parent, kids = await _fan_out(conn, q, 2, unique_key=b"k", unique_scope=scope)
    assert kids == []
    p = await fetch(conn, schema, parent)
    assert (p["status"], p["children_pending"]) == ("runnable", 0)


async def _finish(conn: Any, q: Queries, kid: int, token: str, kind: str) -> list[Any]:
    return await complete(conn, q, id=kid, token=token, kind=kind, result='"ok"', error="bad")


async def test_concurrent_siblings_release_the_parent_exactly_once(dsn, conn, q, schema) -> None:
    # N + 1 children: N finish concurrently, one stays pending — so a decrement lost
    # or counted twice shows in children_pending instead of hiding at zero.
    parent, kids = await _fan_out(conn, q, N + 1)
    tokens: dict[int, str] = {}
    for i in range(len(kids)):
        (row,) = await claim(conn, q, f"node-{i}:1", limit=1)
        tokens[row[0]] = f"node-{i}:1"
    assert sorted(tokens) == kids
    async with connections(dsn, N + 1) as conns:
        gate, workers = conns[0], conns[1:]
        pids = [await backend_pid(w) for w in workers]
        async with gate.transaction():
            await gate.execute(
                f'SELECT 1 FROM "{schema}".gen_durable WHERE id = %s FOR NO KEY UPDATE', (parent,)
            )
            finishing = [
                asyncio.create_task(_finish(w, q, kid, tokens[kid], "done" if i % 2 else "stop"))
                for i, (w, kid) in enumerate(zip(workers, kids[:N], strict=True))
            ]
            await wait_blocked(conn, *pids)
        results = await asyncio.gather(*finishing)
    assert sorted(r[0][0] for r in results) == kids[:N]
    p = await fetch(conn, schema, parent)
    assert (p["status"], p["children_pending"]) == ("awaiting_children", 1)
    # The last child reaches zero: the parent wakes at the barrier step, once.
    await _finish(conn, q, kids[N], tokens[kids[N]], "done")
    p = await fetch(conn, schema, parent)
    assert (p["status"], p["children_pending"], p["step"]) == ("runnable", 0, "join")
    assert p["eligible_at"] == p["updated_at"]
    assert p["state"] == {"fanned": True}
    # The parent wakes with every child, failed ones included, in id order.
    (claimed,) = await claim(conn, q, "node-p:2")
    assert claimed[0] == parent and claimed[3] == "join"
    childs = json.loads(claimed[10])
    assert [c[0] for c in childs] == kids
    assert [c[2] for c in childs] == ["done" if i % 2 else "failed" for i in range(N)] + ["done"]
    assert [c[4] for c in childs] == ["ok" if i % 2 else None for i in range(N)] + ["ok"]
    assert [c[5] for c in childs] == [None if i % 2 else "bad" for i in range(N)] + [None]


async def test_siblings_finishing_in_one_batch_decrement_by_their_count(conn, q, schema) -> None:
    parent, kids = await _fan_out(conn, q, 4)
    await claim(conn, q, "node-c:1")
    batch = CompleteBatch.empty()
    for kid in kids[:3]:
        batch.add(id=kid, token="node-c:1", kind="done", result="1")
    assert len(await complete_batch(conn, q, batch)) == 3
    assert (await fetch(conn, schema, parent))["children_pending"] == 1
    await _finish(conn, q, kids[3], "node-c:1", "stop")
    p = await fetch(conn, schema, parent)
    assert (p["status"], p["children_pending"]) == ("runnable", 0)


async def test_failed_child_releases_its_slot(conn, q, schema) -> None:
    parent, kids = await _fan_out(conn, q, 1)
    await claim(conn, q, "node-c:1")
    assert await _finish(conn, q, kids[0], "node-c:1", "stop") == [(kids[0], "failed")]
    p = await fetch(conn, schema, parent)
    assert (p["status"], p["children_pending"]) == ("runnable", 0)


@pytest.mark.parametrize("kind", ["next", "replay", "await"])
async def test_non_terminal_child_outcome_does_not_decrement(conn, q, schema, kind) -> None:
    parent, kids = await _fan_out(conn, q, 1)
    await claim(conn, q, "node-c:1")
    got = await complete(conn, q, id=kids[0], token="node-c:1", kind=kind, step="s", awaits="x")
    assert len(got) == 1
    p = await fetch(conn, schema, parent)
    assert (p["status"], p["children_pending"]) == ("awaiting_children", 1)


async def test_stale_child_outcome_does_not_decrement(conn, q, schema) -> None:
    parent, kids = await _fan_out(conn, q, 2)
    await claim(conn, q, "node-c:1", ttl=-1)
    assert len(await run(conn, q.reap(100, crash_limit=10))) == 2
    await claim(conn, q, "node-c:2")
    before = await fetch(conn, schema, parent)
    for kind in ("done", "stop"):
        assert await _finish(conn, q, kids[0], "node-c:1", kind) == []
    assert await fetch(conn, schema, parent) == before
    assert before["children_pending"] == 2


async def test_stale_parent_inserts_no_children(conn, q, schema) -> None:
    (parent,) = await insert(conn, q, {"fsm": "tests.Parent"})
    await signal(conn, q, parent, "go")
    await claim_one(conn, q, "node-p:1", ttl=-1)
    await run(conn, q.reap(10, crash_limit=10))
    await claim_one(conn, q, "node-p:2")
    before = await fetch(conn, schema, parent)
    kids = rows({"parent_id": parent}, {"parent_id": parent})
    got = await schedule(
        conn, q, parent, "node-p:1", kids, state='{"stale": true}', consume="go", seen=[1]
    )
    assert got == []
    assert await fetch(conn, schema, parent) == before
    assert await count(conn, schema, "gen_durable") == 1
    assert await count(conn, schema, "signals") == 1


async def test_schedule_childs_consumes_the_seen_signals_of_its_wake_name(conn, q, schema) -> None:
    (parent,) = await insert(conn, q, {"fsm": "tests.Parent"})
    _, go, _ = await signal(conn, q, parent, "go")
    await signal(conn, q, parent, "other")
    await claim_one(conn, q, "node-p:1")
    await schedule(
        conn, q, parent, "node-p:1", rows({"parent_id": parent}), consume="go", seen=[go]
    )
    assert await count(conn, schema, "signals") == 1
    assert await count(conn, schema, "signals", "name = 'other'") == 1
