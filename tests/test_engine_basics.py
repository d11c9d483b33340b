"""End-to-end behaviour of real engines on real PostgreSQL (SPEC §3–§6, §11, §12)."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
from typing import Any

import psycopg
import pytest

import gen_durable as gd

from .conftest import wait_for


async def finished(engine: gd.Engine, iid: int, timeout: float = 15) -> gd.Instance:
    async def check() -> gd.Instance | None:
        inst = await engine.get(iid)
        assert inst is not None
        return inst if inst.terminal else None

    result: gd.Instance = await wait_for(check, timeout)
    return result


async def status_is(engine: gd.Engine, iid: int, status: str, timeout: float = 15) -> gd.Instance:
    async def check() -> gd.Instance | None:
        inst = await engine.get(iid)
        assert inst is not None
        return inst if inst.status == status else None

    result: gd.Instance = await wait_for(check, timeout)
    return result


class Loop(gd.FSM):
    class State(gd.State):
        n: int = 0
        trail: list[str] = []

    async def step(self, step: str, ctx: gd.Context[Loop.State]) -> gd.Outcome:
        s = ctx.state
        if s.n < 5:
            return gd.Next("again", s.model_copy(update={"n": s.n + 1, "trail": [*s.trail, step]}))
        return gd.Done({"n": s.n, "trail": s.trail})


async def test_typed_state_loops_next_to_done(make_engine) -> None:
    async with make_engine() as engine:
        iid = await engine.insert(Loop, state={"n": 1})
        inst = await finished(engine, iid)
    assert inst.status == "done"
    assert inst.result == {"n": 5, "trail": ["start", "again", "again", "again"]}
    assert inst.state == {"n": 5, "trail": ["start", "again", "again", "again"]}
    assert inst.step == "again" and inst.attempt == 0
    assert inst.locked_by is None and inst.lease_expires_at is None


class Plain(gd.FSM, initial="a"):
    def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        assert isinstance(ctx.state, dict)
        if step == "a":
            return gd.Next("b", {**ctx.state, "a": True})
        return gd.Done(sorted(ctx.state))


async def test_plain_dict_machine(make_engine) -> None:
    async with make_engine() as engine:
        iid = await engine.insert(Plain, state={"x": 1})
        inst = await finished(engine, iid)
    assert inst.state == {"x": 1, "a": True}
    assert inst.result == ["a", "x"]


class Waiter(gd.FSM):
    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        if step == "start":
            go = [s for s in ctx.signals if s.name == "go"]
            if not go:
                return gd.Await("go", ctx.state)
            return gd.Next(
                "after",
                {
                    "payloads": [s.payload for s in go],
                    "seen": sorted({s.name for s in ctx.signals}),
                },
            )
        return gd.Done({"inbox_after": [s.name for s in ctx.signals]})


async def test_await_signal_wake_and_name_scoped_consume(make_engine) -> None:
    async with make_engine() as engine:
        iid = await engine.insert(Waiter)
        await status_is(engine, iid, "awaiting_signal")
        inst = await engine.get(iid)
        assert inst is not None and inst.awaits == ("go",)
        # A non-matching signal wakes nothing and survives.
        # Same dedup key twice: stored once. (Sent while the instance is parked, so
        # the second one cannot land after a woken step consumed the first.)
        assert await engine.signal(iid, "other", {"k": 1}, dedup_key="o-1") is True
        assert await engine.signal(iid, "other", {"k": 1}, dedup_key="o-1") is True
        inst = await engine.get(iid)
        assert inst is not None and inst.status == "awaiting_signal"
        assert await engine.signal(iid, "go", {"amount": 10}, dedup_key="pay-1") is True
        inst = await finished(engine, iid)
        assert inst.status == "done"
        assert inst.state == {"payloads": [{"amount": 10}], "seen": ["go", "other"]}
        # The woken step consumed "go" only; "other" is still in the inbox.
        assert inst.result == {"inbox_after": ["other"]}
        inbox = await engine.inbox(iid)
        assert [s.name for s in inbox] == ["other"]
        # A signal to a finished instance is refused, not an error.
        assert await engine.signal(iid, "go") is False
        with pytest.raises(gd.NoSuchInstance):
            await engine.signal(10**12, "go")


async def test_signal_before_park_is_seen(make_engine) -> None:
    async with make_engine(queues={}) as client:
        iid = await client.insert(Waiter)
        assert await client.signal(iid, "go", {"early": True}) is True
    async with make_engine() as engine:
        inst = await finished(engine, iid)
    assert inst.state["payloads"] == [{"early": True}]


class Flaky(gd.FSM):
    calls: list[int] = []

    def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        Flaky.calls.append(ctx.attempt)
        raise RuntimeError(f"boom {ctx.attempt}")

    def handle(self, error: Exception, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        assert ctx.signals == () and ctx.childs == ()
        if ctx.attempt < 2:
            return gd.Replay(ctx.state, delay=0)
        return gd.Stop(error)


async def test_exception_routed_to_handle_replays_then_stops(make_engine) -> None:
    Flaky.calls.clear()
    async with make_engine() as engine:
        iid = await engine.insert(Flaky)
        inst = await finished(engine, iid)
    assert inst.status == "failed"
    assert Flaky.calls == [0, 1, 2]
    assert inst.attempt == 2
    assert inst.last_error == "RuntimeError: boom 2"  # Stop(error): typed (§5)


class Chooser(gd.FSM):
    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        return gd.Done({"step": step, "queue_marker": ctx.state.get("m")})


async def test_queue_routing(make_engine) -> None:
    async with make_engine(queues={"a": 2}) as engine_a, make_engine(queues={"b": 2}) as engine_b:
        ia = await engine_a.insert(Chooser, queue="a", state={"m": "a"})
        ib = await engine_a.insert(Chooser, queue="b", state={"m": "b"})
        ic = await engine_a.insert(Chooser, queue="c", state={"m": "c"})
        assert (await finished(engine_a, ia)).status == "done"
        assert (await finished(engine_b, ib)).status == "done"
    assert engine_a.stats.steps == 1 and engine_b.stats.steps == 1
    async with make_engine(queues={}) as client:
        inst = await client.get(ic)
        assert inst is not None and inst.status == "runnable" and inst.queue == "c"


ORDER: list[int] = []


class Ordered(gd.FSM):
    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        ORDER.append(ctx.state["p"])
        return gd.Done()


async def test_priority_order_with_concurrency_one(make_engine) -> None:
    ORDER.clear()
    async with make_engine(queues={}) as client:
        ids = await client.insert_all(
            [gd.Spec(Ordered, state={"p": p}, priority=p) for p in (5, -3, 2, 0, 9, -1)]
        )
    async with make_engine(queues={"default": 1}) as engine:
        for iid in ids:
            await finished(engine, iid)
    assert ORDER == [-3, -1, 0, 2, 5, 9]


async def test_schedule_in_delays_the_first_step(make_engine) -> None:
    async with make_engine() as engine:
        t0 = time.monotonic()
        iid = await engine.insert(Chooser, schedule_in=0.8)
        inst = await engine.get(iid)
        assert inst is not None
        assert inst.eligible_at > inst.inserted_at + dt.timedelta(seconds=0.7)
        inst = await finished(engine, iid)
        assert time.monotonic() - t0 >= 0.75
        assert inst.updated_at >= inst.eligible_at


async def test_schedule_precedence(make_engine) -> None:
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    later = soon + dt.timedelta(hours=1)
    async with make_engine(queues={}) as client:
        a = await client.insert(Chooser, eligible_at=soon, schedule_at=later, schedule_in=10)
        b = await client.insert(Chooser, schedule_at=later, schedule_in=10)
        ia, ib = await client.get(a), await client.get(b)
    assert ia is not None and ia.eligible_at == soon
    assert ib is not None and ib.eligible_at == later
    with pytest.raises(gd.ConfigurationError):
        async with make_engine(queues={}) as client:
            await client.insert(Chooser, schedule_in=-1)


async def test_transactional_insert_rolled_back_leaves_no_row(make_engine, dsn) -> None:
    async with make_engine(queues={}) as client:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:  # noqa: SIM117 - the inner one needs conn
            async with conn.transaction(force_rollback=True):
                iid = await client.insert(Chooser, conn=conn)
                # Visible inside the caller's transaction...
                assert (await client.get(iid, conn=conn)) is not None
        # ...and gone with it.
        assert await client.get(iid) is None
        async with await psycopg.AsyncConnection.connect(dsn) as conn, conn.transaction():
            kept = await client.insert(Chooser, conn=conn)
        assert (await client.get(kept)) is not None


class Slow(gd.FSM):
    def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        time.sleep(0.5)  # a blocking call: the behaviour under test
        return gd.Done(threading.current_thread().name)


class Quick(gd.FSM):
    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        return gd.Done(time.monotonic())


async def test_blocking_steps_run_in_parallel_without_stalling_async_ones(make_engine) -> None:
    async with make_engine(queues={"default": 8}) as engine:
        t0 = time.monotonic()
        slow = await engine.insert_all([Slow] * 4)
        quick = await engine.insert(Quick)
        q = await finished(engine, quick)
        # The async step finished while the blocking ones were still sleeping.
        assert q.result - t0 < 0.45
        results = [await finished(engine, i) for i in slow]
        elapsed = time.monotonic() - t0
    assert all(r.result.startswith("gen_durable-step") for r in results)
    # Four 0.5 s sleeps in parallel, not one after another (2 s).
    assert elapsed < 1.6


class Unknown(gd.FSM, name="tests.nowhere.Gone"):
    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        return gd.Done()


async def test_row_naming_an_unknown_machine_is_left_runnable(make_engine, conn, schema) -> None:
    seen: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def handler(event: str, m: Any, md: Any) -> None:
        seen.append((dict(m), dict(md)))

    gd.telemetry.attach("registry.not_found", handler)
    try:
        async with make_engine(queues={}) as client:
            iid = await client.insert(Unknown)
        await conn.execute(
            f'UPDATE "{schema}".gen_durable SET fsm = %s WHERE id = %s', ("nope.Missing", iid)
        )
        async with make_engine(unknown_retry=30) as engine:
            await wait_for(lambda: asyncio.sleep(0, bool(seen)))
            inst = await engine.get(iid)
    finally:
        gd.telemetry.detach("registry.not_found", handler)
    assert inst is not None
    assert inst.status == "runnable" and inst.attempt == 0 and inst.locked_by is None
    assert inst.eligible_at > dt.datetime.now(dt.UTC) + dt.timedelta(seconds=20)
    assert seen[0] == ({"count": 1}, {"fsm": "nope.Missing", "fsm_version": 1})


async def test_several_engines_in_one_process_on_different_schemas(
    make_engine, dsn, schema
) -> None:
    other = schema + "_b"
    await gd.migrate(dsn, schema=other)
    try:
        e2 = gd.Engine(dsn, schema=other, poll_interval=0.05, max_poll_interval=0.2)
        async with make_engine() as e1, e2:
            i1 = await e1.insert(Loop)
            i2 = await e2.insert(Loop)
            assert (await finished(e1, i1)).status == "done"
            assert (await finished(e2, i2)).status == "done"
            # Same id in two schemas: each engine sees only its own.
            assert i1 == i2
    finally:
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(f'DROP SCHEMA "{other}" CASCADE')


async def test_sync_client(make_engine, dsn, schema) -> None:
    def work() -> tuple[int, bool, gd.Instance | None]:
        with gd.SyncClient(dsn, schema=schema) as client:
            iid = client.insert(Waiter)
            ok = client.signal(iid, "go", {"sync": True})
            with psycopg.connect(dsn) as c, c.transaction(force_rollback=True):
                ghost = client.insert(Waiter, conn=c)
            return iid, ok and client.get(ghost) is None, client.get(iid)

    iid, ok, inst = await asyncio.to_thread(work)
    assert ok and inst is not None and inst.fsm == Waiter.__gd_name__
    async with make_engine() as engine:
        assert (await finished(engine, iid)).state["payloads"] == [{"sync": True}]


async def test_client_requires_started_engine(dsn, schema) -> None:
    engine = gd.Engine(dsn, schema=schema)
    with pytest.raises(gd.GenDurableError, match="not started"):
        await engine.insert(Loop)


class Twice(gd.FSM):
    """Waits for two distinct `go` signals; counts its runs."""

    runs: list[int] = []

    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        Twice.runs.append(len(ctx.signals))
        if len([s for s in ctx.signals if s.name == "go"]) < 2:
            return gd.Await("go", ctx.state)
        return gd.Done(len(Twice.runs))


async def test_redelivered_signal_does_not_wake_a_parked_instance(make_engine) -> None:
    Twice.runs.clear()
    async with make_engine() as engine:
        iid = await engine.insert(Twice)
        await status_is(engine, iid, "awaiting_signal")
        assert await engine.signal(iid, "go", dedup_key="a") is True
        await wait_for(lambda: asyncio.sleep(0, Twice.runs == [0, 1]))
        await status_is(engine, iid, "awaiting_signal")
        # The same delivery again (a retried webhook): stored once, wakes nobody.
        assert await engine.signal(iid, "go", dedup_key="a") is True
        inst = await engine.get(iid)
        assert inst is not None and inst.status == "awaiting_signal"
        assert await engine.signal(iid, "go", dedup_key="b") is True
        inst = await finished(engine, iid)
    assert Twice.runs == [0, 1, 2]
    assert inst.result == 3


async def test_migrate_takes_the_dsn_from_the_environment(dsn, monkeypatch) -> None:
    name = "t_env_" + str(time.monotonic_ns())[-8:]
    monkeypatch.setenv("GEN_DURABLE_DSN", dsn)
    try:
        assert await gd.migrate(schema=name) == gd.LATEST_VERSION
        assert gd.migrate_sync(schema=name) == gd.LATEST_VERSION
    finally:
        await gd.migrate_down(schema=name)
        with psycopg.connect(dsn, autocommit=True) as c:
            c.execute(f'DROP SCHEMA "{name}"')


async def test_wait_returns_the_terminal_instance(make_engine, dsn, schema) -> None:
    async with make_engine() as engine:
        iid = await engine.insert(Loop)
        inst = await engine.wait(iid, timeout=15)
        assert inst.status == "done" and inst.result["n"] == 5
        parked = await engine.insert(Waiter)
        with pytest.raises(TimeoutError, match="still"):
            await engine.wait(parked, timeout=0.3)
        with pytest.raises(gd.NoSuchInstance):
            await engine.wait(10**12)

        def sync_wait() -> gd.Instance:
            with gd.SyncClient(dsn, schema=schema) as client:
                return client.wait(iid, timeout=5)

        assert (await asyncio.to_thread(sync_wait)) == inst
