"""Step slots and the adaptive buffer (SPEC §8): a slot is held while a step's code
runs, not while its outcome commits; a continuation takes one again; the buffer of an
unset ``prefetch`` grows with the rate steps start at and stays at the concurrency for
slow steps — and the rows claimed never exceed ``concurrency + prefetch``."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

import gen_durable as gd
from gen_durable._runtime import slots as slots_mod
from gen_durable._runtime.slots import CEILING, HORIZON, Prefetch

from .conftest import wait_for
from .test_effects import _status
from .test_engine_basics import finished
from .test_pipeline import GATES, Gated, _executing

LIVE = {"now": 0, "peak": 0}


class Samples:
    """The test's observer counts its samples; a step body stays open until the next
    one, so bodies overlap for as long as the observer takes to look at them."""

    def __init__(self) -> None:
        self.n = 0
        self.taken = asyncio.Condition()

    async def took(self) -> None:
        async with self.taken:
            self.n += 1
            self.taken.notify_all()

    async def next(self) -> None:
        async with self.taken:
            seen = self.n
            await self.taken.wait_for(lambda: self.n > seen)


SAMPLES: list[Samples] = []


class Quick(gd.FSM):
    async def step(self, step: str, ctx: gd.Context[Any]) -> gd.Outcome:
        return gd.Done()


class Counted(gd.FSM):
    """Three Next steps and a Done; counts how many step bodies run at once."""

    async def step(self, step: str, ctx: gd.Context[Any]) -> gd.Outcome:
        LIVE["now"] += 1
        LIVE["peak"] = max(LIVE["peak"], LIVE["now"])
        try:
            await SAMPLES[0].next()
        finally:
            LIVE["now"] -= 1
        n = int(step[1:]) if step != "start" else 0
        return gd.Next(f"s{n + 1}") if n < 3 else gd.Done()


async def test_a_step_whose_outcome_waits_gives_its_slot_to_the_next_row(
    make_engine, dsn, conn, schema
) -> None:
    """One slot. The first step returns, but a client's transaction holds its row, so
    the outcome cannot commit; the buffered row still runs to its end meanwhile."""
    GATES["slot"] = asyncio.Event()
    async with make_engine(queues={"default": 1}, prefetch=1) as engine:
        first = await engine.insert(Gated, state={"gate": "slot"})
        await wait_for(lambda: _status(engine, first, "executing"))
        client = await psycopg.AsyncConnection.connect(dsn)
        try:
            await client.execute(
                f'SELECT 1 FROM "{schema}".gen_durable WHERE id = %s FOR UPDATE', (first,)
            )
            GATES["slot"].set()  # first's Done now waits on the client's lock
            second = await engine.insert(Quick)
            assert (await finished(engine, second)).status == "done"
            assert (await engine.get(first)).status == "executing"  # type: ignore[union-attr]
        finally:
            await client.rollback()
            await client.close()
        assert (await finished(engine, first)).status == "done"


async def test_steps_never_outnumber_the_slots_nor_claims_the_bound(
    make_engine, conn, schema
) -> None:
    """120 chains of four steps on three slots with a buffer of two: continuations
    compete with buffered rows for the slots freed while outcomes commit. No more than
    three step bodies ever run at once, no more than 3 + 2 rows are ever claimed, and
    continuations did have to wait for a slot (the race this guards was run)."""
    LIVE.update(now=0, peak=0)
    SAMPLES[:] = [Samples()]
    async with make_engine(queues={"default": 3}, prefetch=2) as engine:
        ids = await engine.insert_all([Counted] * 120)
        claimed: list[int] = []

        async def all_done() -> bool:
            claimed.append(await _executing(conn, schema))
            await SAMPLES[0].took()
            return engine.stats.steps >= 480

        await wait_for(all_done, timeout=60, interval=0.005)
        sched = engine._node.schedulers["default"]  # type: ignore[union-attr]
        waited = sched._slots.waited
        statuses = {(await finished(engine, i)).status for i in ids}
    assert statuses == {"done"}
    assert LIVE["peak"] == 3, LIVE
    assert max(claimed) <= 5, max(claimed)
    assert waited > 0


async def test_an_unset_prefetch_grows_for_fast_steps_and_keeps_the_bound(
    make_engine, conn, schema
) -> None:
    async with make_engine(queues={"default": 2}) as engine:
        await engine.insert_all([Quick] * 3000)
        sched = engine._node.schedulers["default"]  # type: ignore[union-attr]
        claimed: list[int] = []
        sizes: list[int] = []

        async def drained() -> bool:
            claimed.append(await _executing(conn, schema))
            sizes.append(sched._prefetch.size)
            return engine.stats.steps >= 3000

        await wait_for(drained, timeout=60, interval=0.005)
    assert max(sizes) > 2, sizes  # it grew beyond the concurrency
    assert max(claimed) <= 2 + CEILING * 2, max(claimed)


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now


def test_the_buffer_follows_the_start_rate_between_the_slots_and_the_ceiling(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = _Clock()
    monkeypatch.setattr(slots_mod.time, "monotonic", clock.monotonic)
    fixed = Prefetch(7, 10)
    assert fixed.update(0) == 7 and fixed.ceiling == 7
    clock.now += 5
    assert fixed.update(100_000) == 7  # a fixed prefetch never moves

    p = Prefetch(None, 100)
    assert p.update(0) == 100 and p.ceiling == 1000  # 20 per slot, at most 1,000
    clock.now += 0.0625
    assert p.update(1000) == 100  # not re-estimated before a tenth of a second
    clock.now += 0.0625
    assert p.update(1000) == int(8000 * HORIZON)  # 1,000 starts in 1/8 s
    clock.now += 0.125
    assert p.update(1250) == int((8000 + 2000) / 2 * HORIZON)  # averaged with 2,000/s
    clock.now += 0.25
    assert p.update(11_250) == 1000  # 40,000/s: the ceiling
    clock.now += 2.0
    assert p.update(11_250) == 100  # idle: back to the concurrency
    clock.now += 1.5
    assert p.update(11_325) == 100  # slow steps (50/s) keep it there
    assert Prefetch(None, 10).ceiling == 10 * CEILING
    assert Prefetch(None, 500).ceiling == 1000
