"""The reaper's crash limit and its error-history entries, against real PostgreSQL
(SPEC §5, §7, §8): every expiry counts, the expiry that reaches the limit fails the row
instead of returning it, and a committed outcome starts the count again."""

from __future__ import annotations

from typing import Any

import pytest

from gen_durable._db.queries import ERROR_HISTORY, Queries

from .sqlhelp import (
    claim,
    claim_one,
    complete,
    fan_out,
    fetch,
    insert,
    rows,
    run,
    schedule,
    set_columns,
)


def limit_text(n: int, step: str = "start") -> str:
    return f"lease expired {n} times on step '{step}': the worker died or froze while running it"


async def crash(conn: Any, q: Queries, token: str, crash_limit: int) -> list[tuple[Any, ...]]:
    """Claim with a lease that is already over, then run the reaper once."""
    await claim(conn, q, token, ttl=-1)
    return await run(conn, q.reap(100, crash_limit=crash_limit))


async def test_below_the_limit_the_row_returns_with_its_count_up(conn, q, schema) -> None:
    (iid,) = await insert(conn, q)
    assert await crash(conn, q, "node-a:1", crash_limit=3) == [(iid, "runnable")]
    row = await fetch(conn, schema, iid)
    assert (row["status"], row["attempt"], row["crash_count"]) == ("runnable", 1, 1)
    assert row["last_error"] is None and row["locked_by"] is None
    (entry,) = row["errors"]
    assert entry["type"] == "LeaseExpired" and entry["traceback"] is None
    assert (entry["step"], entry["attempt"]) == ("start", 0)
    assert "node-a:1" in entry["message"] and "1 of crash_limit 3" in entry["message"]
    assert entry["at"].startswith(str(row["updated_at"].year))


async def test_the_expiry_that_reaches_the_limit_fails_the_row(conn, q, schema) -> None:
    (iid,) = await insert(conn, q, {"step": "charge"})
    assert await crash(conn, q, "node-a:1", crash_limit=2) == [(iid, "runnable")]
    assert await crash(conn, q, "node-a:2", crash_limit=2) == [(iid, "failed")]
    row = await fetch(conn, schema, iid)
    assert row["status"] == "failed"
    assert row["last_error"] == limit_text(2, "charge")
    # The attempt that crashed last, as a Stop leaves it; the count says how often.
    assert (row["attempt"], row["crash_count"]) == (1, 2)
    assert row["locked_by"] is None and row["lease_expires_at"] is None
    assert [(e["type"], e["attempt"]) for e in row["errors"]] == [
        ("LeaseExpired", 0),
        ("LeaseExpired", 1),
    ]
    assert await run(conn, q.reap(100, crash_limit=2)) == []  # terminal: out of the index
    assert await claim(conn, q, "node-a:3") == []


async def test_crash_limit_one_fails_at_the_first_expiry(conn, q, schema) -> None:
    (iid,) = await insert(conn, q)
    assert await crash(conn, q, "node-a:1", crash_limit=1) == [(iid, "failed")]
    row = await fetch(conn, schema, iid)
    assert (row["attempt"], row["crash_count"], row["last_error"]) == (0, 1, limit_text(1))


@pytest.mark.parametrize("kind", ["next", "replay", "await", "done", "stop", "schedule_childs"])
async def test_a_committed_outcome_resets_the_count(conn, q, schema, kind) -> None:
    (iid,) = await insert(conn, q)
    await crash(conn, q, "node-a:1", crash_limit=3)
    await crash(conn, q, "node-a:2", crash_limit=3)
    await claim_one(conn, q, "node-a:3")
    if kind == "schedule_childs":
        got = await schedule(conn, q, iid, "node-a:3", rows({"parent_id": iid}))
    else:
        got = await complete(conn, q, id=iid, token="node-a:3", kind=kind, awaits="go")
    assert len(got) == 1
    row = await fetch(conn, schema, iid)
    assert row["crash_count"] == 0
    # The history is not reset: the expiries happened.
    assert [e["type"] for e in row["errors"]] == ["LeaseExpired"] * 2


async def test_after_a_reset_the_full_limit_applies_again(conn, q, schema) -> None:
    (iid,) = await insert(conn, q)
    await crash(conn, q, "node-a:1", crash_limit=2)
    await claim_one(conn, q, "node-a:2")
    await complete(conn, q, id=iid, token="node-a:2", kind="replay")
    assert await crash(conn, q, "node-a:3", crash_limit=2) == [(iid, "runnable")]
    assert await crash(conn, q, "node-a:4", crash_limit=2) == [(iid, "failed")]


async def test_the_history_keeps_the_last_entries_only(conn, q, schema) -> None:
    (iid,) = await insert(conn, q)
    for n in range(ERROR_HISTORY + 2):
        await crash(conn, q, f"node-a:{n}", crash_limit=100)
    row = await fetch(conn, schema, iid)
    assert row["crash_count"] == ERROR_HISTORY + 2
    assert [e["attempt"] for e in row["errors"]] == list(range(2, ERROR_HISTORY + 2))


async def test_a_live_lease_is_not_counted(conn, q, schema) -> None:
    (iid,) = await insert(conn, q)
    await set_columns(conn, schema, iid, crash_count=5)
    await claim(conn, q, "node-a:1", ttl=300)
    before = await fetch(conn, schema, iid)
    assert await run(conn, q.reap(100, crash_limit=6)) == []
    assert await fetch(conn, schema, iid) == before


async def test_a_poisoned_child_releases_its_parents_barrier(conn, q, schema) -> None:
    parent, kids = await fan_out(conn, q, 2)
    # One child poisoned: one slot of the barrier released, the parent still waits.
    await claim(conn, q, "node-c:1", ttl=-1, limit=1)
    ((first, status),) = await run(conn, q.reap(100, crash_limit=1))
    assert first in kids and status == "failed"
    p = await fetch(conn, schema, parent)
    assert (p["status"], p["children_pending"]) == ("awaiting_children", 1)
    # The other poisoned too: the parent is runnable at its barrier step, once.
    (second,) = set(kids) - {first}
    assert await crash(conn, q, "node-c:2", crash_limit=1) == [(second, "failed")]
    p = await fetch(conn, schema, parent)
    assert (p["status"], p["children_pending"], p["step"]) == ("runnable", 0, "join")
    assert p["eligible_at"] == p["updated_at"]
    (picked,) = await claim(conn, q, "node-p:2")
    assert picked[0] == parent


async def test_a_returned_child_leaves_the_barrier_alone(conn, q, schema) -> None:
    parent, _ = await fan_out(conn, q, 1)
    before = await fetch(conn, schema, parent)
    assert [r[1] for r in await crash(conn, q, "node-c:1", crash_limit=2)] == ["runnable"]
    assert await fetch(conn, schema, parent) == before
