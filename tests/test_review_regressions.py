"""Regressions found by reviewing the runtime against the SPEC (§4, §5, §8, §9, §15, §18).

Each test forces the interleaving or the input it is about (gates, expired leases, held
row locks) and waits on conditions with deadlines: none hopes for a race.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

import gen_durable as gd
from gen_durable._db.queries import Queries
from gen_durable._runtime.completer import Completer, Completion
from gen_durable._runtime.stats import Stats
from gen_durable.client import build_insert

from .conftest import wait_for
from .test_engine_basics import finished

# Short leases so a crash loop (commit fails -> lease expires -> reaper -> re-run)
# shows within a few seconds.
CRASHY = dict(lease_ttl=2, heartbeat_interval=0.5, reap_interval=0.2)

RUNS: dict[str, int] = {}
GATES: dict[str, asyncio.Event] = {}

# An undecodable byte in a file name, as os.listdir/os.fsdecode return it.
UNDECODABLE = b"report-\xff.csv".decode("utf-8", "surrogateescape")


def _count(key: str) -> int:
    RUNS[key] = RUNS.get(key, 0) + 1
    return RUNS[key]


async def _row(conn: psycopg.AsyncConnection[Any], schema: str, iid: int) -> tuple[Any, ...]:
    cur = await conn.execute(
        f'SELECT status::text, attempt, locked_by, lease_expires_at FROM "{schema}".gen_durable '
        "WHERE id = %s",
        (iid,),
    )
    row = await cur.fetchone()
    assert row is not None
    return tuple(row)


async def _terminal(engine: gd.Engine, iid: int) -> gd.Instance | None:
    inst = await engine.get(iid)
    assert inst is not None
    return inst if inst.terminal else None


# -- deterministic commit failures must not become reaper crash loops (§18.4) -----------


class FailsOnFile(gd.FSM):
    """A step whose error message names a file with an undecodable byte; the default
    handle turns it into Stop(error)."""

    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        _count(f"fails-on-file:{ctx.id}")
        raise FileNotFoundError(f"no such file: {UNDECODABLE}")


async def test_error_text_with_lone_surrogate_fails_once_instead_of_crash_looping(
    make_engine,
) -> None:
    async with make_engine(**CRASHY) as engine:
        iid = await engine.insert(FailsOnFile)
        inst = await wait_for(lambda: _terminal(engine, iid), timeout=6)
    assert inst.status == "failed" and inst.attempt == 0
    assert "no such file" in (inst.last_error or "")
    assert RUNS[f"fails-on-file:{iid}"] == 1


class ListsFiles(gd.FSM):
    """Next with a plain-dict state holding a surrogate-escaped file name."""

    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        if step == "start":
            _count(f"lists-files:{ctx.id}")
            return gd.Next("use", {"files": [UNDECODABLE]})
        return gd.Done(ctx.state)


async def test_unencodable_state_goes_through_handle_instead_of_crash_looping(
    make_engine,
) -> None:
    """State that PostgreSQL cannot store is an error *before* anything is written
    (§15), inside the guarded region, so it ends in an outcome (§18.4)."""
    async with make_engine(**CRASHY) as engine:
        iid = await engine.insert(ListsFiles)
        inst = await wait_for(lambda: _terminal(engine, iid), timeout=6)
    assert inst.status == "failed" and inst.attempt == 0
    assert RUNS[f"lists-files:{iid}"] == 1


class BacksOffForever(gd.FSM):
    """A user backoff that is not capped: 2 ** 45 s is past PostgreSQL's timestamp range."""

    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        _count(f"backs-off:{ctx.id}")
        return gd.Replay(ctx.state, delay=2**45)


async def test_replay_delay_out_of_timestamp_range_is_not_a_crash_loop(
    make_engine, conn, schema
) -> None:
    async with make_engine(**CRASHY) as engine:
        iid = await engine.insert(BacksOffForever)

        async def settled() -> bool:
            # Either the delay is refused inside the step (InvalidOutcome -> handle ->
            # failed) or it is clamped (runnable, far in the future). What must not
            # happen is a commit that fails forever, each failure re-run by the reaper
            # (which leaves the row runnable *now*).
            cur = await conn.execute(
                f"SELECT status = 'failed' OR (status = 'runnable' AND "
                f"eligible_at > now() + interval '1 day') FROM \"{schema}\".gen_durable "
                "WHERE id = %s",
                (iid,),
            )
            row = await cur.fetchone()
            return row is not None and bool(row[0])

        await wait_for(settled, timeout=6)
    assert RUNS[f"backs-off:{iid}"] == 1


async def test_insert_with_schedule_in_out_of_range_is_a_typed_error(make_engine) -> None:
    async with make_engine(queues={}) as client:
        with pytest.raises(gd.ConfigurationError):
            await client.insert(BacksOffForever, schedule_in=2**45)


class BadInit(gd.FSM):
    def __init__(self) -> None:
        _count("bad-init")
        raise RuntimeError("cannot build the machine")

    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        return gd.Done()


async def test_machine_constructor_error_is_recorded_not_re_run_by_the_reaper(
    make_engine,
) -> None:
    RUNS.pop("bad-init", None)
    async with make_engine(**CRASHY) as engine:
        iid = await engine.insert(BadInit)
        inst = await wait_for(lambda: _terminal(engine, iid), timeout=6)
    assert inst.status == "failed"
    assert "cannot build the machine" in (inst.last_error or "")
    assert RUNS["bad-init"] == 1


# -- the same node re-claiming a row while its stale run is still going (§8, §18.2) -----


class TwoRuns(gd.FSM):
    """Attempt 0 and attempt 1 each wait on their own gate."""

    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        await GATES[f"{ctx.state['gate']}:{ctx.attempt}"].wait()
        return gd.Done({"attempt": ctx.attempt})


async def test_stale_run_finishing_does_not_drop_the_new_claim_from_the_heartbeat(
    make_engine, conn, schema
) -> None:
    """The reaper hands a stuck row back and this very node re-claims it (new token)
    while the first run is still going. When the first run ends (its outcome is
    stale), the second claim must keep being heartbeated."""
    GATES["hb:0"], GATES["hb:1"] = asyncio.Event(), asyncio.Event()
    stale: list[Any] = []

    def on_stale(event: str, m: dict[str, Any], md: dict[str, Any]) -> None:
        stale.append(md)

    gd.telemetry.attach("outcome.stale", on_stale)
    try:
        async with make_engine(
            queues={"default": 2}, lease_ttl=3, heartbeat_interval=0.3, reap_interval=0.1
        ) as engine:
            iid = await engine.insert(TwoRuns, state={"gate": "hb"})

            async def claimed(attempt: int) -> tuple[Any, ...] | None:
                row = await _row(conn, schema, iid)
                return row if row[0] == "executing" and row[1] == attempt else None

            first = await wait_for(lambda: claimed(0))
            # What the reaper does to an expired lease (done by hand so that no
            # heartbeat can renew the lease first).
            await conn.execute(
                f"UPDATE \"{schema}\".gen_durable SET status = 'runnable', "
                "attempt = attempt + 1, locked_by = NULL, lease_expires_at = NULL, "
                "eligible_at = now() WHERE id = %s",
                (iid,),
            )
            second = await wait_for(lambda: claimed(1))
            assert second[2] != first[2]  # a new claim token, same node
            GATES["hb:0"].set()  # the stale first run returns its outcome
            await wait_for(lambda: asyncio.sleep(0, bool(stale)))
            lease_after_stale = (await _row(conn, schema, iid))[3]

            async def extended() -> bool:
                row = await _row(conn, schema, iid)
                return row[1] == 1 and row[3] > lease_after_stale

            # Heartbeats every 0.3 s must keep extending the second claim's lease
            # (checked well inside lease_ttl, before the reaper could interfere).
            await wait_for(extended, timeout=2)
            GATES["hb:1"].set()
            inst = await finished(engine, iid)
    finally:
        gd.telemetry.detach("outcome.stale", on_stale)
    assert inst.result == {"attempt": 1}


# -- a drained sync step is handed back; its thread's late result is dropped (§8) ----

SYNC_GATE = threading.Event()
SYNC_INSIDE = threading.Event()
SYNC_RETURNED = threading.Event()


def _step_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("gen_durable-step")]


class SyncBlocker(gd.FSM):
    def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        SYNC_INSIDE.set()
        SYNC_GATE.wait(20)  # a sync step cancellation cannot interrupt: under test
        SYNC_RETURNED.set()
        return gd.Done()


async def test_drained_sync_step_still_running_is_handed_back_and_its_result_dropped(
    make_engine, conn, schema
) -> None:
    """Cancelling the task of a sync step does not stop its thread. At the drain limit
    the row is handed back anyway (runnable, the interrupted attempt counted), so it
    does not wait a whole lease for another node; what the thread returns later is
    discarded — it never reaches the row."""
    SYNC_GATE.clear()
    SYNC_INSIDE.clear()
    SYNC_RETURNED.clear()
    engine = make_engine(queues={"default": 1}, lease_ttl=60, drain_timeout=0.3)
    await engine.start()
    try:
        iid = await engine.insert(SyncBlocker, partition_key="account-7")
        await wait_for(lambda: asyncio.sleep(0, SYNC_INSIDE.is_set()))
        await engine.stop()
        assert not SYNC_GATE.is_set()  # the step is still inside user code
        status, attempt, locked_by, _ = await _row(conn, schema, iid)
        assert (status, attempt, locked_by) == ("runnable", 1, None)
    finally:
        SYNC_GATE.set()
    # The pool was shut down by the stop: the thread ends once its step returned.
    await wait_for(lambda: asyncio.sleep(0, SYNC_RETURNED.is_set() and not _step_threads()))
    status, attempt, locked_by, _ = await _row(conn, schema, iid)
    assert (status, attempt, locked_by) == ("runnable", 1, None)


# -- per-key order holds when the key's head row is locked (§9) -----------------------

ORDER: list[str] = []


class Ledger(gd.FSM):
    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        ORDER.append(ctx.state["op"])
        return gd.Done()


async def test_partition_key_order_holds_while_head_row_is_locked_by_a_delivery(
    make_engine, dsn, schema
) -> None:
    """A signal delivered inside the caller's open transaction holds the target's row
    lock until that transaction ends. The picker's SKIP LOCKED must not then run the
    key's *next* instance first: within a key, instances run in (priority,
    eligible_at) order (§9)."""
    ORDER.clear()
    async with make_engine(queues={}) as client:
        first = await client.insert(Ledger, state={"op": "debit"}, partition_key="acct-1")
        await client.insert(Ledger, state={"op": "credit"}, partition_key="acct-1")
    async with await psycopg.AsyncConnection.connect(dsn) as tx:
        async with make_engine(queues={}) as client:
            assert await client.signal(first, "note", {"by": "webhook"}, conn=tx)
            worker = make_engine(queues={"default": 4})
            await worker.start()
            # Let the worker poll several times while the delivery is uncommitted.
            await wait_for(lambda: asyncio.sleep(0, worker.stats.picks >= 4), timeout=5)
        await tx.commit()
    await wait_for(lambda: asyncio.sleep(0, len(ORDER) == 2))
    assert ORDER == ["debit", "credit"]


# -- a legal schema name longer than 51 characters (§2, §16) --------------------------


class Hello(gd.FSM):
    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        return gd.Done("hi")


async def test_long_schema_name_inserts_and_runs(dsn) -> None:
    """Schema names may use all 63 bytes of a PostgreSQL identifier; the NOTIFY channel
    derived from it must still be a legal channel name."""
    name = ("t_" + uuid.uuid4().hex + "_tenant_workflows_production")[:60]
    await gd.migrate(dsn, schema=name)
    try:
        engine = gd.Engine(dsn, schema=name, poll_interval=0.05, max_poll_interval=0.2)
        async with engine:
            iid = await engine.insert(Hello)
            inst = await finished(engine, iid)
        assert inst.result == "hi"
    finally:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as c:
            await c.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


# -- group commit: one row locked by a client transaction stalls the node (§4, §6) ------


class Gated(gd.FSM):
    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        await GATES[ctx.state["gate"]].wait()
        return gd.Done(ctx.state["gate"])


async def test_row_locked_by_a_client_transaction_does_not_stall_unrelated_outcomes(
    make_engine, dsn, schema, conn
) -> None:
    """A web handler signals two running instances inside its own transaction and is
    slow to commit: those two rows stay locked. Their outcomes must wait, but the
    outcome of an unrelated instance must still commit promptly (a blocked row must
    not hold every flusher of the node hostage)."""
    gates = ("lk-a", "lk-b", "lk-c")
    for g in gates:
        GATES[g] = asyncio.Event()
    async with make_engine(queues={"default": 3}) as engine:
        # insert_all returns ids ascending, in input order here (no unique keys).
        a, b, c = await engine.insert_all([gd.Spec(Gated, state={"gate": g}) for g in gates])

        async def all_executing() -> bool:
            cur = await conn.execute(
                f"SELECT count(*) FROM \"{schema}\".gen_durable WHERE status = 'executing'"
            )
            row = await cur.fetchone()
            return row is not None and row[0] == 3

        await wait_for(all_executing)
        async with await psycopg.AsyncConnection.connect(dsn) as tx:
            assert await engine.signal(a, "note", conn=tx)
            assert await engine.signal(b, "note", conn=tx)
            GATES["lk-a"].set()
            GATES["lk-b"].set()

            async def flushes_blocked() -> bool:
                cur = await conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE %s",
                    (f"%{schema}%",),
                )
                row = await cur.fetchone()
                return row is not None and row[0] >= 1

            await wait_for(flushes_blocked)
            GATES["lk-c"].set()
            try:
                inst = await wait_for(lambda: _terminal(engine, c), timeout=4)
            finally:
                await tx.commit()
        assert inst.result == "lk-c"
        for iid in (a, b):
            assert (await finished(engine, iid)).status == "done"


# -- a stale outcome sharing a flush with its row's live outcome (§18.2) ----------------


async def test_stale_outcome_in_the_same_flush_as_the_live_one_changes_nothing(
    dsn, schema, conn
) -> None:
    """The node re-claimed a row whose first run is still going (the reaper ran), and
    both runs finish into ONE flush: the stale run's Next (consuming "go") and the live
    run's Await("go") (keeping it). Only the live claim's outcome may apply: the stale
    one must not consume the inbox, and it must be reported stale."""
    q = Queries(schema)
    table = f'"{schema}".gen_durable'
    stmt = q.insert(build_insert([Gated]))
    row = await (await conn.execute(stmt.query, stmt.params)).fetchone()
    assert row is not None
    (x,) = row[0]
    await conn.execute(
        f"UPDATE {table} SET status = 'executing', locked_by = 'n:2', "
        "lease_expires_at = now() + interval '1 minute', attempt = 1 WHERE id = %s",
        (x,),
    )
    cur = await conn.execute(
        f'INSERT INTO "{schema}".signals (target_id, name) VALUES (%s, %s) RETURNING id',
        (x, "go"),
    )
    row = await cur.fetchone()
    assert row is not None
    go = row[0]
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        dsn, min_size=1, max_size=1, kwargs={"autocommit": True}, open=False
    )
    await pool.open()
    try:
        completer = Completer(pool, q, Stats())
        loop = asyncio.get_running_loop()
        stale = Completion(x, "n:1", "next", step="after", consume="go", seen=(go,))
        live = Completion(x, "n:2", "await", awaits="go", seen=(go,))
        for item in (stale, live):
            item.future = loop.create_future()
        await completer._flush([stale, live])
    finally:
        await pool.close()
    assert stale.future.result() is None  # reported stale
    assert live.future.result() == ("awaiting_signal", None)
    status, inbox = (
        await _row(conn, schema, x),
        await (
            await conn.execute(f'SELECT id FROM "{schema}".signals WHERE target_id = %s', (x,))
        ).fetchall(),
    )
    assert status[0] == "awaiting_signal"
    assert inbox == [(go,)]


# -- BaseExceptions raised by user code are errors of the step (§5, v2) --------------


class Interrupted(BaseException):
    """Not an Exception: like CancelledError, KeyboardInterrupt, SystemExit."""


class CrashesFirst(gd.FSM):
    """Attempt 0 raises a BaseException; handle sees it like any error."""

    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        _count(f"crash:{ctx.state['key']}")
        if ctx.attempt == 0:
            if ctx.state["how"] == "cancelled":
                raise asyncio.CancelledError()
            raise Interrupted()
        return gd.Done({"attempt": ctx.attempt})

    def handle(self, error: Exception, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        _count(f"handled:{ctx.state['key']}")
        return gd.Stop(error)


class SyncCrashesFirst(gd.FSM):
    def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        _count(f"crash:{ctx.state['key']}")
        if ctx.attempt == 0:
            raise Interrupted()
        return gd.Done({"attempt": ctx.attempt})

    def handle(self, error: Exception, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        _count(f"handled:{ctx.state['key']}")
        return gd.Stop(error)


@pytest.mark.parametrize(
    ("machine", "how"),
    [(CrashesFirst, "cancelled"), (CrashesFirst, "interrupted"), (SyncCrashesFirst, "interrupted")],
)
async def test_base_exception_raised_by_a_step_goes_through_handle(
    make_engine, machine: type[gd.FSM], how: str
) -> None:
    """v1 treated these as crashes left to the reaper; a poisoned row then killed or
    stalled node after node. Now the step's own BaseException — even a CancelledError
    it raised itself — is an error: handle decides, once, on the first run."""
    async with make_engine(**CRASHY) as engine:
        key = uuid.uuid4().hex
        iid = await engine.insert(machine, state={"how": how, "key": key})
        inst = await finished(engine, iid, timeout=10)
    assert inst.status == "failed" and inst.attempt == 0
    assert inst.last_error is not None
    assert ("CancelledError" if how == "cancelled" else "Interrupted") in inst.last_error
    assert RUNS[f"crash:{key}"] == 1  # not re-run by the reaper
    assert RUNS[f"handled:{key}"] == 1
