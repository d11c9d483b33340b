"""Effects that commit with the outcome: ``spawn=`` and ``send=`` (SPEC §20)."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

import gen_durable as gd

from .conftest import wait_for
from .sqlhelp import claim_one, count, run, wait_lock_waiters

GATE: dict[str, asyncio.Event] = {}


class Target(gd.FSM, name="tests.effects.Target"):
    """Parks on ``hello``; finishes with what it received."""

    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        if step == "finish":
            return gd.Done()
        got = [s.payload for s in ctx.signals if s.name == "hello"]
        if got:
            return gd.Done({"got": got})
        return gd.Await("hello", ctx.state)


class Spawned(gd.Job, name="tests.effects.Spawned"):
    def perform(self, args: dict[str, Any]) -> Any:
        return args


class Fanout(gd.FSM, name="tests.effects.Fanout"):
    """Spawns three jobs and sends two signals with its first outcome. With a ``gate``
    in its state, the first attempt waits for the test to open it before returning."""

    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        if step == "start":
            gate = ctx.state.get("gate")
            if gate and ctx.attempt == 0:
                await GATE[gate].wait()
            return gd.Next(
                "rest",
                ctx.state,
                spawn=[
                    gd.Spec(Spawned, args={"n": 1}),
                    gd.Spec(Spawned, args={"n": 2}, unique_key="spawned-2"),
                    Spawned,
                ],
                send=[
                    gd.Send(ctx.state["by_id"], "hello", {"via": "id"}),
                    gd.Send(ctx.state["by_key"], "hello", {"via": "key"}, dedup_key="d1"),
                ],
            )
        return gd.Done({"attempt": ctx.attempt})


def _spawned(conn: Any, schema: str) -> Any:
    return count(conn, schema, "gen_durable", f"fsm = '{Spawned.__gd_name__}'")


async def test_a_step_spawning_three_and_sending_two_commits_all_with_its_outcome(
    make_engine, dsn, conn, schema
) -> None:
    """While a client holds the sent-to row locked, the flush cannot commit: neither the
    outcome nor any spawned instance is visible. Once the lock goes, all of it is."""
    async with make_engine(queues={}) as client:
        a = await client.insert(Target)
        b = await client.insert(Target, unique_key="target-b")
        fan = await client.insert(Fanout, state={"by_id": a, "by_key": "target-b"})
    async with await psycopg.AsyncConnection.connect(dsn) as locker:
        await locker.execute(f'SELECT 1 FROM "{schema}".gen_durable WHERE id = %s FOR UPDATE', (a,))
        engine = make_engine(queues={"default": 1})
        async with engine:
            # The step ran and its flush is being retried against the lock.
            await wait_for(lambda: asyncio.sleep(0, engine.stats.steps >= 1))
            # The flush reached the send (after the spawn, in the same transaction)
            # and waits on the lock, times out, retries: still nothing is visible.
            await wait_lock_waiters(conn, schema)
            assert await _spawned(conn, schema) == 0
            assert await count(conn, schema, "signals") == 0
            assert (await client_get(engine, fan)).status == "executing"
            await locker.rollback()
            done = await engine.wait(fan, timeout=30)
            assert done.result == {"attempt": 0}
            assert (await engine.wait(a, timeout=30)).result == {"got": [{"via": "id"}]}
            assert (await engine.wait(b, timeout=30)).result == {"got": [{"via": "key"}]}
            assert await _spawned(conn, schema) == 3
            # Independent instances: no parent, and the spawner waited on no barrier.
            no_parent = f"fsm = '{Spawned.__gd_name__}' AND parent_id IS NULL"
            assert await count(conn, schema, "gen_durable", no_parent) == 3
            assert (await engine.get("spawned-2")) is not None


async def client_get(engine: gd.Engine, iid: int) -> gd.Instance:
    inst = await engine.get(iid)
    assert inst is not None
    return inst


async def test_a_stale_outcome_spawns_and_sends_nothing(make_engine, conn, schema, q) -> None:
    """The lease is backdated and the row reaped and re-claimed by another node while
    the step runs; its outcome, carrying spawn and send, then changes nothing."""
    GATE["stale"] = asyncio.Event()
    stale: list[Any] = []
    gd.telemetry.attach("outcome.stale", lambda e, m, md: stale.append(md))
    try:
        async with make_engine(
            queues={"default": 1},
            prefetch=0,  # nothing buffered: the reaped row must be free for the other node
            lease_ttl=60,
            heartbeat_interval=20,
            reap_interval=30,
        ) as engine:
            a = await engine.insert(Target)
            fan = await engine.insert(
                Fanout, state={"by_id": a, "by_key": "nobody", "gate": "stale"}
            )
            await wait_for(lambda: _status(engine, fan, "executing"))
            await conn.execute(
                f'UPDATE "{schema}".gen_durable SET lease_expires_at = now() - '
                "interval '1 second' WHERE id = %s",
                (fan,),
            )
            assert len(await run(conn, q.reap(10, crash_limit=10))) == 1
            claim = await claim_one(conn, q, "other-node:1")
            assert claim[0] == fan
            GATE["stale"].set()
            await wait_for(lambda: asyncio.sleep(0, bool(stale)))
            inst = await client_get(engine, fan)
    finally:
        gd.telemetry._handlers.pop("outcome.stale", None)
    assert inst.status == "executing" and inst.locked_by == "other-node:1"
    assert await _spawned(conn, schema) == 0
    assert await count(conn, schema, "signals") == 0


async def _status(engine: gd.Engine, iid: int, status: str) -> bool:
    inst = await engine.get(iid)
    return inst is not None and inst.status == status


async def test_a_send_to_a_finished_or_unknown_target_is_dropped_and_counted(
    make_engine, conn, schema
) -> None:
    dropped: list[dict[str, Any]] = []
    gd.telemetry.attach("send.dropped", lambda e, m, md: dropped.append({**m, **md}))
    try:
        async with make_engine(queues={"default": 2}) as engine:
            gone = await engine.insert(Target, step="finish", unique_key="gone")
            await engine.wait(gone, timeout=30)
            fan = await engine.insert(Fanout, state={"by_id": gone, "by_key": "never-seen"})
            done = await engine.wait(fan, timeout=30)
            assert done.result == {"attempt": 0}  # the outcome committed
            await wait_for(lambda: asyncio.sleep(0, len(dropped) == 2))
    finally:
        gd.telemetry._handlers.pop("send.dropped", None)
    name = Fanout.__gd_name__
    assert sorted(dropped, key=lambda d: d["reason"]) == [
        {"count": 1, "id": fan, "fsm": name, "target": gone, "name": "hello", "reason": "finished"},
        {
            "count": 1,
            "id": fan,
            "fsm": name,
            "target": "never-seen",
            "name": "hello",
            "reason": "unknown",
        },
    ]
    assert await count(conn, schema, "signals") == 0
    assert await _spawned(conn, schema) == 3


async def test_a_spawn_whose_key_is_occupied_is_dropped_not_failed(
    make_engine, conn, schema
) -> None:
    async with make_engine(queues={"default": 2}) as engine:
        holder = await engine.insert(Target, unique_key="spawned-2")
        a = await engine.insert(Target)
        fan = await engine.insert(Fanout, state={"by_id": a, "by_key": "spawned-2"})
        assert (await engine.wait(fan, timeout=30)).status == "done"
        assert await _spawned(conn, schema) == 2  # the keyed one was dropped
        assert (await engine.get("spawned-2")).id == holder  # type: ignore[union-attr]


class BadSpawn(gd.FSM, name="tests.effects.BadSpawn"):
    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        return gd.Done(spawn=[gd.Spec(Spawned, priority="high")])


async def test_a_bad_spawn_spec_is_an_error_of_the_step(make_engine, conn, schema) -> None:
    async with make_engine(queues={"default": 1}) as engine:
        iid = await engine.insert(BadSpawn)
        inst = await engine.wait(iid, timeout=30)
    assert inst.status == "failed" and "priority" in (inst.last_error or "")
    assert await count(conn, schema, "gen_durable") == 1


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: gd.Send(1.5, "x"), "target is an instance id"),
        (lambda: gd.Send(True, "x"), "target is an instance id"),
        (lambda: gd.Send(None, "x"), "target is an instance id"),
        (lambda: gd.Send(1, ""), "non-empty str"),
        (lambda: gd.Send(1, "x", dedup_key=3), "dedup_key"),
        (lambda: gd.Next("a", send=[("k", "x")]), "send= items are gd.Send"),
        (lambda: gd.Done(send=gd.Send(1, "x")), "send= must be a list"),
        (lambda: gd.Replay(spawn=["Spawned"]), "spawn= items"),
        (lambda: gd.Await("go", spawn="Spawned"), "spawn= must be a list"),
        (lambda: gd.ScheduleChilds("b", [], spawn=[object()]), "spawn= items"),
    ],
)
def test_bad_effects_are_refused_when_the_outcome_is_built(build: Any, match: str) -> None:
    with pytest.raises(gd.InvalidOutcome, match=match):
        build()


def test_stop_takes_no_effects() -> None:
    with pytest.raises(TypeError):
        gd.Stop("no", spawn=[Spawned])  # type: ignore[call-arg]


def test_effects_are_frozen_as_tuples() -> None:
    items = [gd.Send(1, "x")]
    out = gd.Next("a", send=items, spawn=[Spawned])
    items.append(gd.Send(2, "y"))
    assert out.send == (gd.Send(1, "x"),) and out.spawn == (Spawned,)
    assert gd.Next("a").send == () and gd.Next("a").spawn == ()


async def test_outcomes_without_effects_run_no_effect_statement(make_engine) -> None:
    """The hot path: a plain outcome's flush is its one statement (SPEC §17)."""
    async with make_engine(queues={}) as client:
        iid = await client.insert(Target, step="finish")
    engine = make_engine(queues={"default": 1}, heartbeat_interval=9, reap_interval=30)
    async with engine:
        await engine.wait(iid, timeout=30)
        s = engine.stats.snapshot()
    assert s["outcomes"] == 1 and s["statements"] - s["picks"] == 1


class EveryOutcome(gd.FSM, name="tests.effects.EveryOutcome"):
    """Carries one send on each kind of outcome it returns: Await, ScheduleChilds,
    Replay, Next, Done — each commits through a different part of the flush."""

    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        to = ctx.state["to"]

        def note(what: str) -> list[gd.Send]:
            return [gd.Send(to, "hello", {"from": what}, dedup_key=what)]

        if step == "start":
            if not any(s.name == "go" for s in ctx.signals):
                return gd.Await("go", ctx.state, send=note("await"))
            return gd.ScheduleChilds("joined", [Spawned], ctx.state, send=note("childs"))
        if step == "joined":
            if ctx.attempt == 0:
                return gd.Replay(ctx.state, send=note("replay"))
            return gd.Next("last", ctx.state, send=note("next"), spawn=[Spawned])
        return gd.Done(send=note("done"))


class Collector(gd.FSM, name="tests.effects.Collector"):
    """Waits until five different ``hello`` signals are in its inbox."""

    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        got = sorted({s.payload["from"] for s in ctx.signals if s.name == "hello"})
        if len(got) < 5:
            return gd.Await("hello", ctx.state)
        return gd.Done(got)


async def test_effects_ride_every_kind_of_outcome(make_engine, conn, schema) -> None:
    async with make_engine(queues={"default": 2}) as engine:
        sink = await engine.insert(Collector, unique_key="sink")
        iid = await engine.insert(EveryOutcome, state={"to": "sink"})
        await wait_for(lambda: _status(engine, iid, "awaiting_signal"))
        assert await engine.signal(iid, "go")
        assert (await engine.wait(iid, timeout=30)).status == "done"
        done = await engine.wait(sink, timeout=30)
    assert done.result == ["await", "childs", "done", "next", "replay"]
    assert await _spawned(conn, schema) == 2  # the child and the spawned one
    no_parent = f"fsm = '{Spawned.__gd_name__}' AND parent_id IS NULL"
    assert await count(conn, schema, "gen_durable", no_parent) == 1
