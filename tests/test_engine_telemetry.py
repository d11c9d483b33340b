"""Telemetry events and their documented fields (SPEC §14), and the per-step cost (§17)."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any

import pytest

import gen_durable as gd

from .conftest import wait_for
from .test_engine_basics import finished


class Two(gd.FSM):
    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        if step == "start":
            return gd.Next("end", ctx.state)
        if ctx.state.get("fail"):
            raise ValueError("no")
        return gd.Done()


@pytest.fixture
def events() -> Any:
    seen: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = defaultdict(list)

    def handler(event: str, m: Any, md: Any) -> None:
        seen[event].append((dict(m), dict(md)))

    for name in gd.telemetry.EVENTS:
        gd.telemetry.attach(name, handler)
    yield seen
    for name in gd.telemetry.EVENTS:
        gd.telemetry.detach(name, handler)


async def test_events_fire_with_documented_fields(make_engine, events) -> None:
    async with make_engine(queues={"default": 2}, prefetch=1) as engine:
        ok = await engine.insert(Two)
        bad = await engine.insert(Two, state={"fail": True})
        await finished(engine, ok)
        await finished(engine, bad)
    stops = events["step.stop"]
    assert {md["kind"] for _, md in stops} == {"next", "done", "stop"}
    for m, md in stops:
        assert set(m) == {"duration"} and m["duration"] >= 0
        assert set(md) == {"id", "fsm", "step", "kind"} and md["fsm"] == Two.__gd_name__
    ((m, md),) = events["step.exception"]
    assert set(m) == {"duration"}
    assert md["id"] == bad and md["step"] == "end" and isinstance(md["error"], ValueError)
    m, md = events["pick.stop"][0]
    assert set(m) == {"count", "demand", "duration"} and m["demand"] == 3
    assert md == {"queue": "default", "node": engine.node_id}
    m, md = events["scheduler.saturation"][0]
    assert set(m) == {"in_flight", "buffer", "concurrency", "prefetch"}
    assert m["concurrency"] == 2 and m["prefetch"] == 1 and md == {"queue": "default"}
    assert events["scheduler.drain"] == [({"released": 0, "in_flight": 0}, {"queue": "default"})]


async def test_reaper_event(make_engine, conn, schema, events) -> None:
    async with make_engine(queues={}) as client:
        iid = await client.insert(Two)
    await conn.execute(
        f"UPDATE \"{schema}\".gen_durable SET status = 'executing', locked_by = 'dead:1', "
        "lease_expires_at = now() - interval '1 second' WHERE id = %s",
        (iid,),
    )
    async with make_engine(reap_interval=0.05) as engine:
        await finished(engine, iid)
    assert events["reaper.reaped"][0] == ({"count": 1}, {"ids": [iid]})


async def test_a_raising_handler_is_logged_and_detached(make_engine, caplog) -> None:
    calls: list[int] = []

    def bad(event: str, m: Any, md: Any) -> None:
        calls.append(1)
        raise RuntimeError("handler bug")

    gd.telemetry.attach("step.stop", bad)
    with caplog.at_level(logging.ERROR, logger="gen_durable"):
        async with make_engine() as engine:
            ids = await engine.insert_all([Two] * 3)
            for i in ids:
                await finished(engine, i)
    assert calls == [1]
    assert not gd.telemetry.listening("step.stop")
    assert "handler bug" in caplog.text


def test_unknown_event_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown telemetry event"):
        gd.telemetry.attach("step.started", lambda *a: None)


class Chain(gd.FSM):
    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        if step == "start":
            return gd.Next("end", ctx.state)
        return gd.Done()


async def test_a_plain_next_step_costs_one_statement_of_its_own(make_engine) -> None:
    """SPEC §17: beyond the (amortized) pick, a Next step issues exactly one statement;
    inbox and children arrive with the pick and cost nothing extra."""
    async with make_engine(queues={}) as client:
        iid = await client.insert(Chain)
    engine = make_engine(queues={"default": 1}, heartbeat_interval=9, reap_interval=30)
    async with engine:
        await finished(engine, iid)
        await wait_for(lambda: asyncio.sleep(0, engine.stats.steps == 2))
        s = engine.stats.snapshot()
    # Two steps (Next, Done): one outcome statement each, everything else is picks.
    assert s["outcomes"] == 2
    assert s["statements"] - s["picks"] == 2
    assert s["heartbeats"] == 0 and s["reaped"] == 0


async def test_group_commit_shares_statements_between_steps(make_engine) -> None:
    async with make_engine(queues={}) as client:
        ids = await client.insert_all([Chain] * 400)
    engine = make_engine(queues={"default": 100}, heartbeat_interval=9, reap_interval=30)
    async with engine:
        for i in ids:
            await finished(engine, i)
        await wait_for(lambda: asyncio.sleep(0, engine.stats.steps == 800))
        s = engine.stats.snapshot()
    assert s["outcomes"] == 800
    # Far fewer statements than steps: outcomes and claims travel in batches.
    assert s["statements"] < 800 / 2
