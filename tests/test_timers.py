"""Waits that end on time, through a running engine (SPEC §19).

``ctx.awaited`` and ``ctx.timed_out`` as a step sees them, ``await.timeout``
telemetry, a deadline that outlives the engine that parked it, 10,000 timeouts on one
engine, and a durable sleep landing on time with the default poll settings.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import gen_durable as gd

from .conftest import wait_for


class Approval(gd.FSM):
    """Waits for approved/rejected for ``state["timeout"]`` seconds; reports what woke it."""

    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        if not ctx.timed_out and not ctx.awaited:
            at = time.time() + ctx.state["timeout"]
            return gd.Await(
                ["approved", "rejected"], {**ctx.state, "at": at}, timeout=ctx.state["timeout"]
            )
        return gd.Done(
            {
                "timed_out": ctx.timed_out,
                "awaited": [s.name for s in ctx.awaited],
                "late": time.time() - ctx.state["at"],
            }
        )


async def _done(engine: gd.Engine, iid: int, timeout: float = 30.0) -> gd.Instance:
    async def finished() -> gd.Instance | None:
        inst = await engine.get(iid)
        return inst if inst is not None and inst.terminal else None

    inst: gd.Instance = await wait_for(finished, timeout=timeout)
    return inst


async def _parked(engine: gd.Engine, iid: int) -> bool:
    inst = await engine.get(iid)
    return inst is not None and inst.status == "awaiting_signal"


async def test_a_signal_of_the_set_or_the_deadline_wakes_the_step(make_engine) -> None:
    fired: list[int] = []

    def on_timeout(event: str, m: Any, md: Any) -> None:
        fired.append(m["count"])

    gd.telemetry.attach("await.timeout", on_timeout)
    try:
        async with make_engine() as engine:
            signalled = await engine.insert(Approval, state={"timeout": 600})
            timing_out = await engine.insert(Approval, state={"timeout": 1.0})
            await wait_for(lambda: _parked(engine, signalled))
            inst = await engine.get(signalled)
            assert inst is not None and inst.awaits == ("approved", "rejected")
            assert inst.await_deadline is not None
            assert await engine.signal(signalled, "note") is True  # not in the set
            assert await _parked(engine, signalled)
            assert await engine.signal(signalled, "rejected", {"why": "budget"}) is True
            got = await _done(engine, signalled)
            late = await _done(engine, timing_out)
            inbox = [s.name for s in await engine.inbox(signalled)]
    finally:
        gd.telemetry.detach("await.timeout", on_timeout)
    assert got.result["timed_out"] is False and got.result["awaited"] == ["rejected"]
    assert inbox == ["note"]  # consumed: the seen signals of the set, nothing else
    assert late.result["timed_out"] is True and late.result["awaited"] == []
    # About a second after the deadline at most (1 s timer period, loaded machine).
    assert 0 <= late.result["late"] < 2.5
    assert sum(fired) >= 1


async def test_a_deadline_survives_an_engine_restart(make_engine) -> None:
    async with make_engine() as first:
        iid = await first.insert(Approval, state={"timeout": 2.0})
        await wait_for(lambda: _parked(first, iid))
    # No engine runs while the deadline passes; the next one ends the wait.
    async with make_engine() as second:
        got = await _done(second, iid)
    assert got.result["timed_out"] is True and got.result["late"] >= 0


class Parked(gd.FSM):
    """Parks for one second on a signal nobody sends; reports how late it woke."""

    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        if not ctx.timed_out:
            return gd.Await("never", {"at": time.time() + 1.0}, timeout=1.0)
        return gd.Done(time.time() - ctx.state["at"])


async def test_ten_thousand_one_second_timeouts_on_one_engine(make_engine, conn, schema) -> None:
    n = 10_000
    async with make_engine(queues={"default": 256}, prefetch=256, min_demand=32) as engine:
        await engine.insert_all([gd.Spec(Parked)] * n)

        async def all_done() -> bool:
            cur = await conn.execute(
                f"SELECT count(*) FROM \"{schema}\".gen_durable WHERE status = 'done'"
            )
            row = await cur.fetchone()
            return row is not None and row[0] == n

        await wait_for(all_done, timeout=180, interval=0.2)
    late = "(result #>> '{}')::float8"
    cur = await conn.execute(f'SELECT max({late}), min({late}) FROM "{schema}".gen_durable')
    row = await cur.fetchone()
    assert row is not None
    latest, earliest = row
    assert earliest >= 0  # never before its deadline
    assert latest < 5.0, f"a wait ended {latest:.2f}s after its deadline"


class Sleeper(gd.FSM, initial="a"):
    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        if step == "a":
            return gd.Next("b", {"t0": time.time()}, delay=2)
        return gd.Done(time.time() - ctx.state["t0"])


async def test_a_two_second_sleep_lands_on_time_with_default_settings(dsn, schema) -> None:
    # Default poll settings (an idle scheduler backs off to max_poll_interval, 5 s):
    # the timer knows when the sleeper is due and wakes the scheduler then.
    engine = gd.Engine(dsn, schema=schema, queues={"default": 4})
    async with engine:
        iid = await engine.insert(Sleeper)
        got = await _done(engine, iid)
    assert 2.0 <= got.result <= 3.5, got.result


class BadWait(gd.FSM):
    """Builds an Await with both bounds: the error is the step's own."""

    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        return gd.Await("go", ctx.state, timeout=5, deadline=dt.datetime.now(dt.UTC))


async def test_a_bad_await_fails_the_step_and_parks_nothing(make_engine) -> None:
    async with make_engine() as engine:
        iid = await engine.insert(BadWait)
        got = await _done(engine, iid)
    assert got.status == "failed" and "InvalidOutcome" in (got.last_error or "")
    assert "not both" in (got.last_error or "")
    assert got.awaits is None and got.await_deadline is None
