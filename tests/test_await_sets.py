"""Await sets and deadlines at the statement level (SPEC §19, §18.1, §18.5, §27.1).

The signal-vs-deadline tests force each order of "deliver" against "the timer flips"
with two connections and explicit transactions: one side holds the row lock (checked
in ``pg_locks`` where the other side must wait), then commits. Deadlines are moved
into the past with a direct column write instead of waiting for them.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
from typing import Any

import pytest

import gen_durable as gd
from gen_durable._db.queries import Queries
from gen_durable._db.statements.pick import Claim

from .sqlhelp import (
    backend_pid,
    claim,
    claim_one,
    complete,
    connections,
    fetch,
    inbox,
    insert,
    run,
    scalar,
    set_columns,
    signal,
    wait_blocked,
)

TOKEN = "node-a:1"
UTC = dt.UTC


def _seen(claim_row: tuple[Any, ...]) -> list[int]:
    return [s[0] for s in json.loads(claim_row[9] or "[]")]


def _timed_out(claim_row: tuple[Any, ...]) -> bool:
    return bool(claim_row[_CLAIM_FIELDS.index("timed_out")])


_CLAIM_FIELDS = list(Claim.__dataclass_fields__)  # the pick's columns, in order


async def _parked(conn: Any, q: Queries, names: Any, **bound: Any) -> int:
    (iid,) = await insert(conn, q)
    await claim_one(conn, q, "node-z:1")
    got = await complete(conn, q, id=iid, token="node-z:1", kind="await", awaits=names, **bound)
    assert got == [(iid, "awaiting_signal")]
    return iid


async def _expire(conn: Any, schema: str, iid: int) -> None:
    """Move a parked row's deadline into the past (no waiting for the clock)."""
    await set_columns(
        conn, schema, iid, await_deadline=dt.datetime.now(UTC) - dt.timedelta(seconds=1)
    )


# -- validation (no database) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("go",), {"timeout": 1, "deadline": dt.datetime.now(UTC)}, "not both"),
        (("go",), {"deadline": dt.datetime(2030, 1, 1)}, "aware"),
        (("go",), {"deadline": "2030-01-01T00:00:00Z"}, "datetime"),
        (([],), {}, "empty"),
        ((set(),), {}, "empty"),
        ((["a", ""],), {}, "non-empty str"),
        ((["a", 3],), {}, "non-empty str"),
        ((b"go",), {}, "sequence of names"),
        ((7,), {}, "sequence of names"),
        (("go",), {"timeout": 0}, "> 0"),
        (("go",), {"timeout": -1}, ">= 0"),
        (("go",), {"timeout": math.nan}, ">= 0"),
        (("go",), {"timeout": math.inf}, ">= 0"),
        (("go",), {"timeout": dt.timedelta(0)}, "> 0"),
        (("go",), {"timeout": "5"}, "seconds"),
        (("go",), {"timeout": True}, "seconds"),
    ],
)
def test_bad_awaits_raise_invalid_outcome_when_built(args, kwargs, match) -> None:
    with pytest.raises(gd.InvalidOutcome, match=match):
        gd.Await(*args, **kwargs)


def test_an_await_set_is_a_set_of_names() -> None:
    assert gd.Await(["b", "a", "b"]).names == ("a", "b")
    assert gd.Await(("x",), timeout=dt.timedelta(seconds=3)).names == ("x",)
    assert gd.Await("go").names == ("go",)
    aware = dt.datetime(2030, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert gd.Await("go", deadline=aware).deadline == aware


# -- sets --------------------------------------------------------------------------------


async def test_any_name_of_the_set_wakes_and_others_do_not(conn, q, schema) -> None:
    iid = await _parked(conn, q, ["approved", "rejected"])
    assert (await fetch(conn, schema, iid))["awaits"] == ["approved", "rejected"]
    status, sid, woke = await signal(conn, q, iid, "reminder")
    assert (status, woke) == ("awaiting_signal", False) and sid is not None
    assert (await fetch(conn, schema, iid))["status"] == "awaiting_signal"
    status, sid, woke = await signal(conn, q, iid, "rejected")
    assert woke is True
    assert (await fetch(conn, schema, iid))["status"] == "runnable"


async def test_progressing_outcome_consumes_the_seen_signals_of_the_whole_set(
    conn, q, schema
) -> None:
    iid = await _parked(conn, q, ["a", "b"])
    await signal(conn, q, iid, "other")
    await signal(conn, q, iid, "a")
    await signal(conn, q, iid, "b")
    row = await claim_one(conn, q, TOKEN)
    seen = _seen(row)
    assert row[6] == ["a", "b"] and len(seen) == 3
    late = await signal(conn, q, iid, "b")  # arrives during the step
    assert late is not None and late[1] is not None
    await complete(conn, q, id=iid, token=TOKEN, kind="next", step="s2", consume=row[6], seen=seen)
    assert [n for _, n in await inbox(conn, schema, iid)] == ["other", "b"]
    assert [i for i, _ in await inbox(conn, schema, iid)][1] == late[1]
    assert (await fetch(conn, schema, iid))["awaits"] is None


async def test_await_on_a_set_with_any_unseen_member_commits_runnable(conn, q, schema) -> None:
    """No lost wake-up for every name of the set (§18.1)."""
    (iid,) = await insert(conn, q)
    await claim_one(conn, q, TOKEN)
    await signal(conn, q, iid, "b")  # lands while the step runs
    got = await complete(conn, q, id=iid, token=TOKEN, kind="await", awaits=["a", "b"], timeout=60)
    assert got == [(iid, "runnable")]
    row = await fetch(conn, schema, iid)
    # Woken by the signal, not by time: no deadline left, so not timed out.
    assert row["awaits"] == ["a", "b"] and row["await_deadline"] is None


async def test_re_await_on_a_set_after_seeing_its_signals_parks(conn, q, schema) -> None:
    """No re-await spin for any name of the set (§18.5)."""
    iid = await _parked(conn, q, ["a", "b"])
    await signal(conn, q, iid, "a")
    await signal(conn, q, iid, "other")
    row = await claim_one(conn, q, TOKEN)
    got = await complete(
        conn, q, id=iid, token=TOKEN, kind="await", awaits=["b", "a"], seen=_seen(row)
    )
    assert got == [(iid, "awaiting_signal")]


# -- deadlines ---------------------------------------------------------------------------


async def test_timeout_counts_from_its_own_commit_and_deadline_is_absolute(conn, q, schema) -> None:
    iid = await _parked(conn, q, "go", timeout=100.0)
    first = (await fetch(conn, schema, iid))["await_deadline"]
    now = await scalar(conn, "SELECT now()")
    assert dt.timedelta(seconds=99) < first - now <= dt.timedelta(seconds=100)
    # The same step re-awaits (woken by another name): a new wait, a new timeout.
    await signal(conn, q, iid, "go")
    row = await claim_one(conn, q, TOKEN)
    await complete(conn, q, id=iid, token=TOKEN, kind="await", awaits="go", seen=_seen(row),
                   timeout=10.0)  # fmt: skip
    second = (await fetch(conn, schema, iid))["await_deadline"]
    now = await scalar(conn, "SELECT now()")
    assert dt.timedelta(seconds=9) < second - now <= dt.timedelta(seconds=10)
    # deadline= is stored as it is: one absolute deadline across waits.
    fixed = dt.datetime(2031, 2, 3, 4, 5, 6, tzinfo=UTC)
    await signal(conn, q, iid, "go")
    row = await claim_one(conn, q, TOKEN)
    await complete(conn, q, id=iid, token=TOKEN, kind="await", awaits="go", seen=_seen(row),
                   deadline=fixed)  # fmt: skip
    assert (await fetch(conn, schema, iid))["await_deadline"] == fixed


async def test_the_timer_fires_only_due_waits_and_the_pick_reports_timed_out(
    conn, q, schema
) -> None:
    due = await _parked(conn, q, ["a", "b"], timeout=3600.0)
    later = await _parked(conn, q, "go", timeout=3600.0)
    unbounded = await _parked(conn, q, "go")
    assert await run(conn, q.fire_timers(["default"], 100)) == []
    await _expire(conn, schema, due)
    assert await run(conn, q.fire_timers(["other-queue"], 100)) == []
    assert await run(conn, q.fire_timers(["default"], 100)) == [(due, "default")]
    statuses = {i: (await fetch(conn, schema, i))["status"] for i in (due, later, unbounded)}
    assert statuses == {due: "runnable", later: "awaiting_signal", unbounded: "awaiting_signal"}
    row = await claim_one(conn, q, TOKEN)
    assert row[0] == due and _timed_out(row) and row[6] == ["a", "b"]
    # The timed-out step moves on: a progressing outcome clears the wait entirely.
    await complete(conn, q, id=due, token=TOKEN, kind="next", step="s2", consume=row[6])
    after = await fetch(conn, schema, due)
    assert after["awaits"] is None and after["await_deadline"] is None
    row = await claim_one(conn, q, TOKEN)
    assert not _timed_out(row)


async def test_the_timer_takes_time_as_a_parameter(conn, q, schema) -> None:
    soon = await _parked(conn, q, "go", timeout=60.0)
    later = await _parked(conn, q, "go", timeout=7200.0)
    in_an_hour = dt.datetime.now(UTC) + dt.timedelta(hours=1)
    assert await run(conn, q.fire_timers(["default"], 100, until=in_an_hour)) == [(soon, "default")]
    assert await run(conn, q.fire_timers(["default"], 100, until="infinity")) == [
        (later, "default")
    ]


async def test_the_timer_fires_in_batches(conn, q, schema) -> None:
    ids = [await _parked(conn, q, "go", timeout=3600.0) for _ in range(5)]
    for iid in ids:
        await _expire(conn, schema, iid)
    first = await run(conn, q.fire_timers(["default"], 3))
    second = await run(conn, q.fire_timers(["default"], 3))
    assert len(first) == 3 and len(second) == 2
    assert sorted(i for i, _ in first + second) == ids


async def test_an_await_whose_deadline_has_passed_commits_runnable(conn, q, schema) -> None:
    (iid,) = await insert(conn, q)
    await claim_one(conn, q, TOKEN)
    past = dt.datetime.now(UTC) - dt.timedelta(minutes=1)
    got = await complete(conn, q, id=iid, token=TOKEN, kind="await", awaits="go", deadline=past)
    assert got == [(iid, "runnable")]
    assert _timed_out(await claim_one(conn, q, TOKEN))


async def test_a_signal_wake_clears_the_deadline(conn, q, schema) -> None:
    iid = await _parked(conn, q, "go", timeout=3600.0)
    await signal(conn, q, iid, "go")
    assert (await fetch(conn, schema, iid))["await_deadline"] is None
    row = await claim_one(conn, q, TOKEN)
    assert not _timed_out(row) and row[6] == ["go"]


async def test_next_due_reports_the_next_deadline_and_the_next_sleeper(conn, q, schema) -> None:
    got = await run(conn, q.next_due("default"))
    assert [(d, r) for d, r, _ in got] == [(None, None)]
    iid = await _parked(conn, q, "go", timeout=30.0)
    deadline = (await fetch(conn, schema, iid))["await_deadline"]
    soon = dt.datetime.now(UTC) + dt.timedelta(seconds=5)
    await insert(conn, q, {"eligible_at": soon, "priority": 3})
    await insert(conn, q, {"eligible_at": soon + dt.timedelta(seconds=5)})
    ((d, r, now),) = await run(conn, q.next_due("default"))
    assert d == deadline and r == soon and now <= soon


# -- §27.1: signal vs deadline, forced interleavings --------------------------------------


async def test_signal_committed_before_the_deadline_flip_wakes_once_not_timed_out(
    dsn, conn, q, schema
) -> None:
    iid = await _parked(conn, q, ["paid", "cancel"], timeout=3600.0)
    await _expire(conn, schema, iid)
    async with connections(dsn, 2, autocommit=False) as (deliverer, timer):
        await run(deliverer, q.signal(iid, "paid", "{}", None))  # row lock held
        # The timer skips the row a delivery holds instead of waiting for it.
        assert await run(timer, q.fire_timers(["default"], 100)) == []
        await timer.commit()
        await deliverer.commit()
        assert await run(timer, q.fire_timers(["default"], 100)) == []
        await timer.commit()
    row = await claim_one(conn, q, TOKEN)
    assert not _timed_out(row)
    assert [s[1] for s in json.loads(row[9])] == ["paid"]
    assert await claim(conn, q, "node-b:1") == []  # one wake, never two


async def test_signal_after_the_deadline_flip_is_seen_by_the_timed_out_step(
    dsn, conn, q, schema
) -> None:
    iid = await _parked(conn, q, ["paid", "cancel"], timeout=3600.0)
    await _expire(conn, schema, iid)
    async with connections(dsn, 2, autocommit=False) as (deliverer, timer):
        assert await run(timer, q.fire_timers(["default"], 100)) == [(iid, "default")]
        pid = await backend_pid(deliverer)
        await deliverer.commit()
        delivery = asyncio.ensure_future(run(deliverer, q.signal(iid, "paid", "{}", None)))
        await wait_blocked(conn, pid)  # the delivery waits for the timer's row lock
        await timer.commit()
        ((status, sid, woke),) = await delivery
        await deliverer.commit()
    # The timer woke it; the delivery stored the signal and woke nothing more.
    assert (status, woke) == ("runnable", False) and sid is not None
    row = await claim_one(conn, q, TOKEN)
    assert _timed_out(row)
    assert [s[1] for s in json.loads(row[9])] == ["paid"]  # in ctx.awaited: never lost
    assert await claim(conn, q, "node-b:1") == []  # one wake, never two
