"""Failure paths of the runtime under real PostgreSQL: outcomes the database refuses,
stops while clients hold row locks, leases of rows a client holds, client calls that
exhaust their pool, and concurrent stops. Each test forces its interleaving with
row locks, a statement timeout, a small pool or two ``stop()`` calls."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import os
import time
import uuid
from collections import Counter
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool

import gen_durable as gd
from gen_durable._db.queries import InsertRows, Queries
from gen_durable._runtime.completer import Completer, Completion
from gen_durable._runtime.stats import Stats
from gen_durable.client import build_insert

from .conftest import FAST, wait_for
from .test_engine_basics import finished

RUNS: Counter[str] = Counter()
GATES: dict[str, asyncio.Event] = {}
STEP_TIMES: dict[str, list[float]] = {}


def gate(name: str) -> asyncio.Event:
    return GATES.setdefault(name, asyncio.Event())


class Leaf(gd.Job):
    def perform(self, args: dict[str, Any]) -> None:
        return None


class FanOut(gd.FSM):
    """Schedules children PostgreSQL may refuse; handle records what it was given."""

    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        if step == "start":
            RUNS[ctx.state["key"]] += 1
            how = ctx.state["how"]
            if how == "big_key":
                kids = [gd.Spec(Leaf, unique_key=bytes.fromhex(ctx.state["ukey"]))]
            else:
                kids = [Leaf] * ctx.state["n"]
            return gd.ScheduleChilds("joined", kids, ctx.state)
        return gd.Done({"joined": len(ctx.childs)})

    def handle(self, error: Exception, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        RUNS["handled:" + ctx.state["key"]] += 1
        RUNS["handled_as:" + type(error).__name__] += 1
        return gd.Stop(error)


class Ticker(gd.FSM):
    """A chain of Next steps recording when each step started."""

    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        times = STEP_TIMES.setdefault(ctx.state["key"], [])
        times.append(time.monotonic())
        RUNS[f"{ctx.state['key']}:{len(times)}:{ctx.attempt}"] += 1
        if len(times) >= ctx.state["n"]:
            return gd.Done(len(times))
        # The workload, not a wait: each step takes 10 ms, so the chain is still
        # running while the refused outcome is being isolated beside it.
        await asyncio.sleep(0.01)
        return gd.Next("start", ctx.state)


class Gated(gd.FSM):
    """Counts its runs, then waits for the test to open its gate."""

    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        RUNS[ctx.state["key"]] += 1
        await gate(ctx.state["key"]).wait()
        return gd.Done({"attempt": ctx.attempt})


def _key() -> str:
    return uuid.uuid4().hex


async def _row(conn: psycopg.AsyncConnection[Any], schema: str, iid: int) -> tuple[Any, ...]:
    cur = await conn.execute(
        f"SELECT status::text, attempt, locked_by, lease_expires_at, last_error, now() "
        f'FROM "{schema}".gen_durable WHERE id = %s',
        (iid,),
    )
    row = await cur.fetchone()
    assert row is not None
    return tuple(row)


async def _status(conn: psycopg.AsyncConnection[Any], schema: str, iid: int) -> str:
    return str((await _row(conn, schema, iid))[0])


def _max_gap(times: list[float]) -> float:
    return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


# -- A: outcomes PostgreSQL refuses ------------------------------------------------------


async def test_child_key_too_large_to_index_fails_the_parent_after_one_run(
    make_engine, conn, schema
) -> None:
    """A child's unique_key of incompressible bytes too large for its btree entry: the
    ScheduleChilds is refused for good. The parent must go through handle once and end
    failed — not be retried by the completer, reaped and re-run forever — while a chain
    running beside it on the same node never stalls and never runs a step twice."""
    key, chain = _key(), _key()
    async with make_engine(queues={"default": 8}) as engine:
        ticker = await engine.insert(Ticker, state={"key": chain, "n": 40})
        parent = await engine.insert(
            FanOut, state={"key": key, "how": "big_key", "ukey": os.urandom(2800).hex()}
        )
        inst = await finished(engine, parent, timeout=15)
        tick = await finished(engine, ticker, timeout=15)
    assert inst.status == "failed"
    assert RUNS[key] == 1 and RUNS["handled:" + key] == 1
    assert inst.last_error is not None and "refused the ScheduleChilds outcome" in inst.last_error
    assert "index row" in inst.last_error  # the database's own words
    assert tick.status == "done" and tick.result == 40
    assert all(n == 1 for k, n in RUNS.items() if k.startswith(chain + ":"))
    assert _max_gap(STEP_TIMES[chain]) < 1.0
    cur = await conn.execute(f'SELECT count(*) FROM "{schema}".gen_durable WHERE parent_id = %s',
                             (parent,))  # fmt: skip
    assert await cur.fetchone() == (0,)


async def test_fan_out_past_statement_timeout_goes_through_handle(
    make_engine, dsn, conn, schema
) -> None:
    """40,000 children against a statement_timeout the user's DSN sets: the timeout
    would strike again on every retry, so it is a refusal of the outcome, handled once."""
    key, chain = _key(), _key()
    timed = make_conninfo(dsn, options="-c statement_timeout=100")
    async with gd.Engine(timed, **{**FAST, "schema": schema, "queues": {"default": 8}}) as engine:
        ticker = await engine.insert(Ticker, state={"key": chain, "n": 20})
        parent = await engine.insert(FanOut, state={"key": key, "how": "many", "n": 40_000})
        inst = await finished(engine, parent, timeout=30)
        tick = await finished(engine, ticker, timeout=30)
    assert inst.status == "failed", inst
    assert RUNS[key] == 1 and RUNS["handled:" + key] == 1
    assert inst.last_error is not None and "statement timeout" in inst.last_error
    assert tick.status == "done"
    assert all(n == 1 for k, n in RUNS.items() if k.startswith(chain + ":"))
    cur = await conn.execute(f'SELECT count(*) FROM "{schema}".gen_durable WHERE parent_id = %s',
                             (parent,))  # fmt: skip
    assert await cur.fetchone() == (0,)


async def _claimed(conn: psycopg.AsyncConnection[Any], schema: str, n: int) -> list[int]:
    q = Queries(schema)
    stmt = q.insert(build_insert([Leaf] * n))
    row = await (await conn.execute(stmt.query, stmt.params)).fetchone()
    assert row is not None
    ids = list(row[0])
    await conn.execute(
        f"UPDATE \"{schema}\".gen_durable SET status = 'executing', locked_by = 'n:' || id, "
        "lease_expires_at = now() + interval '1 minute' WHERE id = ANY(%s)",
        (ids,),
    )
    return ids


async def test_completer_isolates_a_refused_outcome_and_commits_the_rest(dsn, conn, schema) -> None:
    """Below the client's validation (which now normalises offsets), a value PostgreSQL
    rejects — a UTC offset beyond ±15:59 — inside one batch with other outcomes: the
    batch is split, the other outcomes commit, the bad one fails with OutcomeRefused."""
    ids = await _claimed(conn, schema, 5)
    bad_rows = InsertRows.empty()
    far = dt.datetime(2030, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=16)))
    for col, value in zip(
        ("fsm", "fsm_version", "step", "state", "queue", "priority", "partition_key",
         "partition_limit", "rate_limit", "eligible_at", "delay", "unique_key", "unique_scope",
         "parent_id"),
        (Leaf.__gd_name__, 1, "start", None, "default", 0, None, 1, None, far, None, None, None,
         ids[2]),
        strict=True,
    ):  # fmt: skip
        getattr(bad_rows, col).append(value)
    batch = [Completion(i, f"n:{i}", "done", result="1") for i in ids]
    batch[2] = Completion(ids[2], f"n:{ids[2]}", "schedule_childs", step="n", children=bad_rows)
    loop = asyncio.get_running_loop()
    for item in batch:
        item.future = loop.create_future()
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        dsn, min_size=1, max_size=2, kwargs={"autocommit": True}, open=False
    )
    await pool.open()
    try:
        # One flush of the whole batch, as the completer makes when five outcomes wait.
        await Completer(pool, Queries(schema), Stats())._flush_resilient(batch)
    finally:
        await pool.close()
    refused = batch[2].future.exception()
    assert isinstance(refused, gd.OutcomeRefused), refused
    assert isinstance(refused.__cause__, psycopg.DataError)
    assert [c.future.result() for i, c in enumerate(batch) if i != 2] == [("done", None)] * 4
    assert await _status(conn, schema, ids[2]) == "executing"  # untouched, claim held


async def test_insert_of_a_key_too_large_to_index_is_a_typed_error(
    make_engine, dsn, conn, schema
) -> None:
    big = os.urandom(2800)
    async with make_engine(queues={}) as engine:
        with pytest.raises(gd.EncodingError, match="sha256") as info:
            await engine.insert(Leaf, unique_key=big)
        assert isinstance(info.value.__cause__, psycopg.errors.ProgramLimitExceeded)
        with pytest.raises(gd.EncodingError):
            await engine.insert_all([Leaf, gd.Spec(Leaf, unique_key=big)])
    with gd.SyncClient(dsn, schema=schema) as client, pytest.raises(gd.EncodingError):
        client.insert(Leaf, unique_key=big)
    cur = await conn.execute(f'SELECT count(*) FROM "{schema}".gen_durable')
    assert await cur.fetchone() == (0,)


async def test_offsets_postgresql_cannot_parse_are_stored_as_the_same_instant(
    make_engine, conn, schema
) -> None:
    far = dt.datetime(2030, 1, 1, 20, 0, tzinfo=dt.timezone(dt.timedelta(hours=16)))
    async with make_engine(queues={}) as engine:
        iid = await engine.insert(Leaf, eligible_at=far)
        inst = await engine.get(iid)
    assert inst is not None and inst.eligible_at == far


# -- B: stops are bounded whatever clients hold --------------------------------------------


async def test_stop_is_bounded_while_a_client_holds_a_buffered_row_and_a_finished_one(
    make_engine, dsn, conn, schema
) -> None:
    """A client's open transaction holds one buffered row and the row of a step that
    has finished (its outcome waits on the lock). stop() returns within drain_timeout
    plus a small bound; what it could release is runnable, the rest falls to the reaper.
    The finished step gave its slot up while its outcome waits (SPEC §8), so the
    buffered rows start in it: the free one runs to its end, the locked one's outcome
    waits on the lock as well."""
    running, finishing = _key(), _key()
    engine = make_engine(queues={"default": 2}, prefetch=2, drain_timeout=1, lease_ttl=30)
    await engine.start()
    a = await engine.insert(Gated, state={"key": running})
    d = await engine.insert(Gated, state={"key": finishing})
    await wait_for(lambda: asyncio.sleep(0, RUNS[running] == 1 and RUNS[finishing] == 1))
    b = await engine.insert(Leaf)
    c = await engine.insert(Leaf)
    for iid in (b, c):
        await wait_for(lambda iid=iid: _executing(conn, schema, iid))
    client = await psycopg.AsyncConnection.connect(dsn)
    try:
        await client.execute(
            f'SELECT 1 FROM "{schema}".gen_durable WHERE id = ANY(%s) FOR UPDATE', ([b, d],)
        )
        gate(finishing).set()  # d's Done now waits on the client's lock
        await asyncio.sleep(0)
        started = time.monotonic()
        await asyncio.wait_for(engine.stop(), timeout=1 + 3)
        took = time.monotonic() - started
    finally:
        gate(running).set()
        await client.rollback()
        await client.close()
    assert took < 1 + 2, took
    assert (await _row(conn, schema, c))[:3] == ("done", 0, None)  # ran in d's slot
    assert (await _row(conn, schema, a))[:3] == ("runnable", 1, None)  # handed back
    for held in (b, d):  # skipped, lease intact: the reaper's
        status, _, locked_by, *_ = await _row(conn, schema, held)
        assert status == "executing" and locked_by is not None


async def _executing(conn: psycopg.AsyncConnection[Any], schema: str, iid: int) -> bool:
    return await _status(conn, schema, iid) == "executing"


# -- C: a client holding a running row cannot make its lease lapse -----------------------


async def test_running_row_locked_by_a_client_past_its_lease_runs_once(
    make_engine, dsn, conn, schema
) -> None:
    """The heartbeat skips locked rows; a client that holds a running row for longer
    than lease_ttl must not let a reaper (of another node here) take it once the
    client commits while the first run still goes on."""
    key = _key()
    fast = dict(lease_ttl=1.5, heartbeat_interval=0.3, reap_interval=0.1)
    runner = make_engine(queues={"default": 2}, **fast)
    other = make_engine(queues={"default": 2}, **fast)
    await runner.start()
    iid = await runner.insert(Gated, state={"key": key})
    await wait_for(lambda: asyncio.sleep(0, RUNS[key] == 1))
    await other.start()
    client = await psycopg.AsyncConnection.connect(dsn)
    try:
        # A webhook signals the instance inside its own long transaction.
        assert await runner.signal(iid, "poke", conn=client) is True

        async def lapsed() -> bool:
            _, _, _, lease, _, now = await _row(conn, schema, iid)
            return bool(lease < now - dt.timedelta(seconds=0.5))

        await wait_for(lapsed, timeout=10)  # held past its lease by the wall clock
        await client.commit()

        async def renewed() -> bool:
            _, _, _, lease, _, now = await _row(conn, schema, iid)
            return bool(lease > now)

        await wait_for(renewed, timeout=5)
        gate(key).set()
        inst = await finished(runner, iid)
    finally:
        await client.close()
    assert RUNS[key] == 1
    assert inst.status == "done" and inst.result == {"attempt": 0}


# -- D: client calls cannot starve the heartbeat -------------------------------------------


async def test_storm_of_blocked_client_calls_leaves_the_heartbeat_on_time(
    make_engine, dsn, conn, schema
) -> None:
    """Twelve signal() calls wait on a row a client holds, more than the client pool
    has connections: the heartbeat must keep a running step's lease ahead of the clock
    all along (it has connections of its own)."""
    key = _key()
    engine = make_engine(
        queues={"default": 2}, pool_size=2, lease_ttl=1.5, heartbeat_interval=0.3,
        reap_interval=0.1,
    )  # fmt: skip
    await engine.start()
    iid = await engine.insert(Gated, state={"key": key})
    target = await engine.insert(Gated, state={"key": _key()}, eligible_at=_later())
    await wait_for(lambda: asyncio.sleep(0, RUNS[key] == 1))
    client = await psycopg.AsyncConnection.connect(dsn)
    storm: list[asyncio.Task[bool]] = []
    try:
        await client.execute(
            f'SELECT 1 FROM "{schema}".gen_durable WHERE id = %s FOR UPDATE', (target,)
        )
        storm = [asyncio.create_task(engine.signal(target, f"s{i}")) for i in range(12)]
        loop = asyncio.get_running_loop()
        until = loop.time() + 3 * 1.5
        leases: set[dt.datetime] = set()
        while loop.time() < until:  # sample the lease through two lease lengths
            _, attempt, _, lease, _, now = await _row(conn, schema, iid)
            assert lease > now and attempt == 0, (lease, now)
            leases.add(lease)
            await asyncio.sleep(0.05)
        assert len(leases) >= 5  # it kept moving
        assert not any(t.done() for t in storm)  # the calls really were blocked
    finally:
        await client.rollback()
        await client.close()
    assert all(await asyncio.gather(*storm))
    gate(key).set()
    inst = await finished(engine, iid)
    assert RUNS[key] == 1 and inst.result == {"attempt": 0}


def _later() -> dt.datetime:
    return dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)


# -- E: concurrent stops share one drain ---------------------------------------------------


async def test_two_concurrent_stops_release_every_buffered_row_with_attempt_unchanged(
    make_engine, conn, schema
) -> None:
    key = _key()
    engine = make_engine(queues={"default": 1}, prefetch=5, drain_timeout=0.5)
    await engine.start()
    running = await engine.insert(Gated, state={"key": key})
    await wait_for(lambda: asyncio.sleep(0, RUNS[key] == 1))
    buffered = await engine.insert_all([Leaf] * 5)
    for iid in buffered:
        await wait_for(lambda iid=iid: _executing(conn, schema, iid))
    try:
        await asyncio.gather(engine.stop(), engine.stop())
        await engine.stop()  # and once more, after the fact
    finally:
        gate(key).set()
    for iid in buffered:
        assert (await _row(conn, schema, iid))[:3] == ("runnable", 0, None)
    assert (await _row(conn, schema, running))[:3] == ("runnable", 1, None)
    assert not engine.started


# -- transient errors: outcomes set aside and retried, each against its deadline -------------


@pytest.mark.parametrize("retry_for", [30.0, 0.0])
async def test_a_lost_connection_sets_outcomes_aside_and_retries_them(
    dsn, conn, schema, retry_for: float
) -> None:
    """The completer's connection is killed under it: the flush fails with a
    connection error, its outcome is retried after a backoff on a new connection and
    commits — or, past its deadline, fails with that error (the lease decides) — while
    outcomes submitted meanwhile flush without waiting for it."""
    ids = await _claimed(conn, schema, 3)
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        dsn, min_size=1, max_size=1, kwargs={"autocommit": True}, open=False
    )
    await pool.open()
    try:
        async with pool.connection() as pooled:
            pid = pooled.info.backend_pid
        await conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        completer = Completer(pool, Queries(schema), Stats(), retry_for=retry_for)
        items = [Completion(i, f"n:{i}", "done", result="1") for i in ids]
        # The first outcome's flush goes out alone (on the dead connection); the other
        # two are submitted while it is in flight.
        first = asyncio.ensure_future(completer.commit(items[0]))

        async def sent() -> bool:  # in flight, or already failed
            return first.done() or (completer._active == 1 and not completer._pending)

        await wait_for(sent, timeout=5, interval=0.0)
        rest = [completer.commit(c) for c in items[1:]]
        results = await asyncio.wait_for(asyncio.gather(first, *rest, return_exceptions=True), 20)
    finally:
        await pool.close()
    statuses = [await _status(conn, schema, i) for i in ids]
    if retry_for:
        assert results == [("done", None)] * 3
        assert statuses == ["done"] * 3
    else:
        # The first outcome rode the flush on the dead connection and, with no time
        # left to retry, fails; the two that queued behind it were not held up by it:
        # they flushed next, on a new connection.
        assert isinstance(results[0], psycopg.OperationalError), results
        assert results[1:] == [("done", None)] * 2
        assert statuses == ["executing", "done", "done"]
