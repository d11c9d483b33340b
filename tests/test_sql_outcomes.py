"""Outcome statements against real PostgreSQL (SPEC §4, §18.2, §18.3).

Every test claims its rows with the real pick first, then applies the outcome with
``complete`` / ``schedule_childs`` exactly as the completer does, and compares every
column of the row before and after.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from gen_durable._db.queries import CompleteBatch, Queries

from .sqlhelp import (
    claim_one,
    complete,
    complete_batch,
    count,
    fan_out,
    fetch,
    inbox,
    insert,
    rows,
    run,
    same_except,
    scalar,
    schedule,
    set_columns,
    signal,
)

TOKEN = "node-a:1"
LEASE = {"locked_by", "lease_expires_at", "updated_at"}


async def _claimed(conn: Any, q: Queries, schema: str) -> dict[str, Any]:
    """A row with history (attempt 2, woken by `go`, an old error, due an hour ago),
    claimed by TOKEN; returns its columns as the claim left them."""
    (iid,) = await insert(conn, q, {"state": '{"n": 0}'})
    await set_columns(
        conn,
        schema,
        iid,
        attempt=2,
        awaits=["go"],
        last_error="old error",
        eligible_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1),
    )
    await claim_one(conn, q, TOKEN)
    row = await fetch(conn, schema, iid)
    assert row["status"] == "executing" and row["locked_by"] == TOKEN
    return row


def _lease_cleared(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert after["locked_by"] is None
    assert after["lease_expires_at"] is None
    assert after["updated_at"] > before["updated_at"]


async def test_next_effect_on_every_column(conn, q, schema) -> None:
    before = await _claimed(conn, q, schema)
    got = await complete(
        conn,
        q,
        id=before["id"],
        token=TOKEN,
        kind="next",
        step="second",
        state='{"n": 1}',
        consume="go",
    )
    assert got == [(before["id"], "runnable")]
    after = await fetch(conn, schema, before["id"])
    changed = {"status", "step", "attempt", "eligible_at", "state", "awaits"} | LEASE
    same_except(before, after, changed)
    _lease_cleared(before, after)
    assert after["status"] == "runnable"
    assert after["step"] == "second"
    assert after["attempt"] == 0
    assert after["eligible_at"] == after["updated_at"]  # now(), same transaction
    assert after["state"] == {"n": 1}
    assert after["awaits"] is None
    assert after["result"] is None and after["last_error"] == "old error"


@pytest.mark.parametrize("delay", [0.0, 30.0])
async def test_replay_effect_on_every_column(conn, q, schema, delay) -> None:
    before = await _claimed(conn, q, schema)
    got = await complete(
        conn,
        q,
        id=before["id"],
        token=TOKEN,
        kind="replay",
        state='{"n": 5}',
        delay=delay,
        consume="go",
    )
    assert got == [(before["id"], "runnable")]
    after = await fetch(conn, schema, before["id"])
    same_except(before, after, {"status", "attempt", "eligible_at", "state", "awaits"} | LEASE)
    _lease_cleared(before, after)
    assert after["status"] == "runnable"
    assert after["step"] == before["step"]
    assert after["attempt"] == 3
    assert after["eligible_at"] == after["updated_at"] + dt.timedelta(seconds=delay)
    assert after["state"] == {"n": 5}
    assert after["awaits"] is None


async def test_replay_with_delay_is_not_picked_before_it_is_due(conn, q, schema) -> None:
    before = await _claimed(conn, q, schema)
    await complete(conn, q, id=before["id"], token=TOKEN, kind="replay", delay=30.0)
    assert await run(conn, q.pick("default", 10, "node-a:2", 30)) == []
    after = await fetch(conn, schema, before["id"])
    assert after["status"] == "runnable"
    assert after["state"] == before["state"]  # Replay without a state keeps it


async def test_delayed_next_sleeps_runnable_at_its_step(conn, q, schema) -> None:
    # A durable sleep: Next's effect on every column, except that the row is due later.
    (iid,) = await insert(conn, q, {"state": '{"n": 0}'})
    await set_columns(conn, schema, iid, attempt=2, awaits=["go"])
    go = (await signal(conn, q, iid, "go"))[1]
    other = (await signal(conn, q, iid, "other"))[1]
    await claim_one(conn, q, TOKEN)
    before = await fetch(conn, schema, iid)
    got = await complete(
        conn,
        q,
        id=iid,
        token=TOKEN,
        kind="next",
        step="after",
        state='{"n": 1}',
        delay=30.0,
        consume="go",
        seen=[go, other],
    )
    assert got == [(iid, "runnable")]
    after = await fetch(conn, schema, iid)
    changed = {"status", "step", "attempt", "eligible_at", "state", "awaits"} | LEASE
    same_except(before, after, changed)
    _lease_cleared(before, after)
    assert (after["status"], after["step"], after["attempt"]) == ("runnable", "after", 0)
    assert after["eligible_at"] == after["updated_at"] + dt.timedelta(seconds=30)
    assert after["state"] == {"n": 1} and after["awaits"] is None
    # Signals consumed as for any Next: the awaited name only.
    assert await inbox(conn, schema, iid) == [(other, "other")]
    assert await run(conn, q.pick("default", 10, "node-a:2", 30)) == []


async def test_await_effect_on_every_column(conn, q, schema) -> None:
    before = await _claimed(conn, q, schema)
    got = await complete(
        conn, q, id=before["id"], token=TOKEN, kind="await", state='{"n": 2}', awaits="paid"
    )
    assert got == [(before["id"], "awaiting_signal")]
    after = await fetch(conn, schema, before["id"])
    same_except(before, after, {"status", "attempt", "eligible_at", "state", "awaits"} | LEASE)
    _lease_cleared(before, after)
    assert after["status"] == "awaiting_signal"
    assert after["step"] == before["step"]
    assert after["attempt"] == 0
    assert after["eligible_at"] == after["updated_at"]
    assert after["state"] == {"n": 2}
    assert after["awaits"] == ["paid"]


@pytest.mark.parametrize(
    ("kind", "written", "status"),
    [
        ("done", {"result": {"ok": True}}, "done"),
        ("stop", {"last_error": "boom: it broke"}, "failed"),
    ],
)
async def test_terminal_outcome_effect_on_every_column(conn, q, schema, kind, written, status):
    before = await _claimed(conn, q, schema)
    got = await complete(
        conn,
        q,
        id=before["id"],
        token=TOKEN,
        kind=kind,
        result='{"ok": true}',
        error="boom: it broke",
        consume="go",
    )
    assert got == [(before["id"], status)]
    after = await fetch(conn, schema, before["id"])
    # Not rewritten: state, step, attempt, eligible_at and the other terminal column.
    same_except(before, after, {"status", "awaits", *written} | LEASE)
    _lease_cleared(before, after)
    assert after["status"] == status
    assert {k: after[k] for k in written} == written
    assert after["state"] == {"n": 0} and after["attempt"] == 2
    assert after["awaits"] is None


async def test_done_with_none_result_stores_json_null(conn, q, schema) -> None:
    before = await _claimed(conn, q, schema)
    await complete(conn, q, id=before["id"], token=TOKEN, kind="done", result="null")
    after = await fetch(conn, schema, before["id"])
    assert after["status"] == "done" and after["result"] is None


async def test_schedule_childs_effect_on_every_column(conn, q, schema) -> None:
    before = await _claimed(conn, q, schema)
    children = rows(
        {"fsm": "tests.Child", "state": '{"c": 1}', "parent_id": before["id"]},
        {"fsm": "tests.Child", "parent_id": before["id"]},
    )
    got = await schedule(conn, q, before["id"], TOKEN, children, state='{"n": 9}', consume="go")
    assert len(got) == 1
    pid, status, child_ids, _, token = got[0]
    assert (pid, status, token) == (before["id"], "awaiting_children", TOKEN)
    assert len(child_ids) == 2
    after = await fetch(conn, schema, before["id"])
    changed = {"status", "step", "attempt", "eligible_at", "state", "awaits", "children_pending"}
    same_except(before, after, changed | LEASE)
    _lease_cleared(before, after)
    assert after["step"] == "join"
    assert after["attempt"] == 0
    assert after["eligible_at"] == after["updated_at"]
    assert after["state"] == {"n": 9}
    assert after["awaits"] is None
    assert after["children_pending"] == 2
    for cid in child_ids:
        child = await fetch(conn, schema, cid)
        assert child["parent_id"] == before["id"]
        assert child["status"] == "runnable" and child["fsm"] == "tests.Child"
    assert (await fetch(conn, schema, child_ids[0]))["state"] == {"c": 1}


async def test_one_complete_statement_applies_a_mixed_batch(conn, q, schema) -> None:
    ids = await insert(conn, q, *({"step": f"s{i}"} for i in range(5)))
    await run(conn, q.pick("default", 10, TOKEN, 30))
    batch = CompleteBatch.empty()
    batch.add(id=ids[0], token=TOKEN, kind="next", step="x", state='{"a": 1}')
    batch.add(id=ids[1], token=TOKEN, kind="replay", delay=5.0)
    batch.add(id=ids[2], token=TOKEN, kind="await", awaits="sig")
    batch.add(id=ids[3], token=TOKEN, kind="done", result="[1, 2]")
    batch.add(id=ids[4], token=TOKEN, kind="stop", error="no")
    got = dict(await complete_batch(conn, q, batch))
    assert got == {
        ids[0]: "runnable",
        ids[1]: "runnable",
        ids[2]: "awaiting_signal",
        ids[3]: "done",
        ids[4]: "failed",
    }
    assert (await fetch(conn, schema, ids[0]))["step"] == "x"
    assert (await fetch(conn, schema, ids[1]))["attempt"] == 1
    assert (await fetch(conn, schema, ids[3]))["result"] == [1, 2]
    assert (await fetch(conn, schema, ids[4]))["last_error"] == "no"


async def test_outcome_on_an_unclaimed_row_matches_nothing(conn, q, schema) -> None:
    (iid,) = await insert(conn, q)
    before = await fetch(conn, schema, iid)
    assert await complete(conn, q, id=iid, token=TOKEN, kind="done", result="1") == []
    assert await fetch(conn, schema, iid) == before


# -- JSON stored as JSON (§18.3) ----------------------------------------------------


async def test_state_result_and_payload_are_jsonb_values_not_strings(conn, q, schema) -> None:
    (iid,) = await insert(conn, q, {"state": '{"a": {"b": [1, 2]}}'})
    s = schema

    async def typeof(column: str, table: str = "gen_durable") -> str:
        key = "target_id" if table == "signals" else "id"
        return str(
            await scalar(
                conn, f'SELECT jsonb_typeof({column}) FROM "{s}".{table} WHERE {key} = %s', iid
            )
        )

    assert await typeof("state") == "object"
    assert await scalar(conn, f"""SELECT state->'a'->'b'->>1 FROM "{s}".gen_durable""") == "2"
    await claim_one(conn, q, TOKEN)
    await complete(conn, q, id=iid, token=TOKEN, kind="next", step="b", state='{"x": "y"}')
    assert await typeof("state") == "object"
    await signal(conn, q, iid, "sig", '{"amount": 10}')
    assert await typeof("payload", "signals") == "object"
    await claim_one(conn, q, "node-a:2")
    await complete(conn, q, id=iid, token="node-a:2", kind="done", result='"finished"')
    assert await typeof("result") == "string"
    assert await scalar(conn, f"SELECT result #>> '{{}}' FROM \"{s}\".gen_durable") == "finished"


# -- claim guard (§18.2) --------------------------------------------------------------


async def _family(conn: Any, q: Queries, schema: str) -> tuple[int, int]:
    """A parent parked on one child; the child woken by `go` with that signal stored."""
    parent, (child,) = await fan_out(conn, q, 1)
    await signal(conn, q, child, "go")
    await set_columns(conn, schema, child, awaits=["go"])
    return parent, child


async def _snapshot(conn: Any, schema: str, *ids: int) -> Any:
    return (
        [await fetch(conn, schema, i) for i in ids],
        [await inbox(conn, schema, i) for i in ids],
        await count(conn, schema, "gen_durable"),
        await count(conn, schema, "signals"),
    )


async def _stale_outcome(conn: Any, q: Queries, kind: str, iid: int, token: str) -> list[Any]:
    seen = [sid for sid, _ in await inbox(conn, q.schema, iid)]
    if kind == "schedule_childs":
        grandchild = rows({"fsm": "tests.Grandchild", "parent_id": iid})
        return await schedule(
            conn, q, iid, token, grandchild, state='{"stale": 1}', consume="go", seen=seen
        )
    return await complete(
        conn,
        q,
        id=iid,
        token=token,
        kind=kind,
        step="stale",
        state='{"stale": 1}',
        result='"stale"',
        error="stale",
        awaits="go",
        consume="go",
        seen=seen,
    )


KINDS = ["next", "replay", "await", "done", "stop", "schedule_childs"]


@pytest.mark.parametrize("kind", KINDS)
async def test_stale_outcome_after_reap_and_same_node_reclaim_changes_nothing(
    conn, q, schema, kind
) -> None:
    parent, child = await _family(conn, q, schema)
    # First claim with a lease that has already run out; the reaper takes it back.
    await claim_one(conn, q, "node-a:1", ttl=-1)
    assert [r[0] for r in await run(conn, q.reap(100, crash_limit=10))] == [child]
    # The same node picks it again: same node id prefix, new pick token.
    await claim_one(conn, q, "node-a:2")
    before = await _snapshot(conn, schema, parent, child)

    assert await _stale_outcome(conn, q, kind, child, "node-a:1") == []
    # Nothing at all changed: no row, no inbox delete, no children, no decrement.
    assert await _snapshot(conn, schema, parent, child) == before

    # The live claim still completes, and its Done releases the parent once.
    got = await complete(
        conn,
        q,
        id=child,
        token="node-a:2",
        kind="done",
        consume="go",
        seen=[sid for sid, _ in await inbox(conn, schema, child)],
    )
    assert got == [(child, "done")]
    p = await fetch(conn, schema, parent)
    assert (p["status"], p["children_pending"], p["step"]) == ("runnable", 0, "join")
    assert await inbox(conn, schema, child) == []


async def test_stale_outcome_misses_after_aba_reclaim(conn, q, schema) -> None:
    """claim → reaped → re-claimed → Next back to runnable → claimed again: the row
    is `executing` at attempt 0 once more, yet the first claim's outcome must miss."""
    parent, child = await _family(conn, q, schema)
    first = await claim_one(conn, q, "node-a:1", ttl=-1)
    assert first[5] == 0  # attempt seen by the first claim
    await run(conn, q.reap(100, crash_limit=10))
    await claim_one(conn, q, "node-a:2")
    assert await complete(conn, q, id=child, token="node-a:2", kind="next", step="start") != []
    third = await claim_one(conn, q, "node-a:3")
    assert third[5] == 0 and third[3] == "start"  # same status, step and attempt as claim 1
    before = await _snapshot(conn, schema, parent, child)
    for kind in KINDS:
        assert await _stale_outcome(conn, q, kind, child, "node-a:1") == []
    assert await _snapshot(conn, schema, parent, child) == before


async def test_outcome_replayed_after_commit_matches_nothing(conn, q, schema) -> None:
    """A completer retrying an outcome that did commit (lost reply) changes nothing."""
    parent, child = await _family(conn, q, schema)
    await claim_one(conn, q, "node-a:1")
    assert await complete(conn, q, id=child, token="node-a:1", kind="stop", error="x") != []
    before = await _snapshot(conn, schema, parent, child)
    assert await complete(conn, q, id=child, token="node-a:1", kind="stop", error="x") == []
    assert await _snapshot(conn, schema, parent, child) == before


ODD = 'quote " back \\ slash\nnewline ✓ 漢'


async def test_outcome_texts_are_stored_verbatim(conn, q, schema) -> None:
    ids = await insert(conn, q, {}, {}, {})
    token = 'node "ö" \\ :1'
    await run(conn, q.pick("default", 10, token, 30))
    batch = CompleteBatch.empty()
    batch.add(id=ids[0], token=token, kind="next", step=ODD, state=json.dumps({"s": ODD}))
    batch.add(id=ids[1], token=token, kind="await", awaits=ODD)
    batch.add(id=ids[2], token=token, kind="stop", error=ODD)
    assert len(await complete_batch(conn, q, batch)) == 3
    first = await fetch(conn, schema, ids[0])
    assert first["step"] == ODD and first["state"] == {"s": ODD}
    assert (await fetch(conn, schema, ids[1]))["awaits"] == [ODD]
    assert (await fetch(conn, schema, ids[2]))["last_error"] == ODD
    # The name round-trips into delivery and consumption too.
    _, sid, woke = await signal(conn, q, ids[1], ODD)
    assert woke is True
    await run(conn, q.pick("default", 10, "node-b:1", 30))
    got = await complete(
        conn, q, id=ids[1], token="node-b:1", kind="next", step="x", consume=ODD, seen=[sid]
    )
    assert got == [(ids[1], "runnable")]
    assert await inbox(conn, schema, ids[1]) == []


async def test_next_keeping_its_claim_effect_on_every_column(conn, q, schema) -> None:
    """Run-ahead: a Next that keeps its claim stays executing under the same token,
    returns the inbox minus what it consumed, and leaves every indexed column (status,
    eligible_at, the lease) as it was, so the update can be HOT."""
    before = await _claimed(conn, q, schema)
    iid = before["id"]
    _, seen, _ = await signal(conn, q, iid, "go")
    _, other, _ = await signal(conn, q, iid, "other")
    before = await fetch(conn, schema, iid)
    batch = CompleteBatch.empty()
    batch.add(
        id=iid,
        token=TOKEN,
        kind="next",
        step="again",
        state='{"n": 7}',
        consume="go",
        seen=[seen],
        keep=True,
    )
    (row,) = await run(conn, q.complete(batch))
    assert row[:2] == (iid, "executing")
    assert [s[:2] for s in json.loads(row[2])] == [[other, "other"]]
    assert row[3] == TOKEN
    after = await fetch(conn, schema, iid)
    changed = {"step", "state", "attempt", "awaits"}
    same_except(before, after, changed | {"updated_at"})
    assert after["locked_by"] == TOKEN and after["status"] == "executing"
    assert after["lease_expires_at"] == before["lease_expires_at"]  # the heartbeat's job
    assert (after["step"], after["state"], after["attempt"]) == ("again", {"n": 7}, 0)
    assert after["eligible_at"] == before["eligible_at"] and after["awaits"] is None
    assert await inbox(conn, schema, iid) == [(other, "other")]
    # The kept claim is still the only one that can complete the row.
    assert await complete(conn, q, id=iid, token="node-a:0", kind="done") == []
    assert await complete(conn, q, id=iid, token=TOKEN, kind="done") == [(iid, "done")]
