"""The default pipeline at low concurrency (SPEC §8, §17): a buffer sized to the
concurrency, freed slots taking buffered rows at once, outcomes of one loop turn sharing
one commit — and buffered claims never started once their lease may have run out."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

import gen_durable as gd
from gen_durable._db.queries import Queries
from gen_durable._runtime.completer import Completer, Completion
from gen_durable._runtime.config import build_config
from gen_durable._runtime.stats import Stats

from .conftest import wait_for
from .test_engine_basics import finished
from .test_hardening import _claimed

GATES: dict[str, asyncio.Event] = {}
RUNS: list[int] = []


class Gated(gd.FSM):
    """Records each run, then waits for the test to open its gate."""

    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        RUNS.append(ctx.id)
        await GATES.setdefault(ctx.state["gate"], asyncio.Event()).wait()
        return gd.Done()


async def _executing(conn: Any, schema: str) -> int:
    cur = await conn.execute(
        f"SELECT count(*) FROM \"{schema}\".gen_durable WHERE status = 'executing'"
    )
    row = await cur.fetchone()
    return int(row[0])


@pytest.mark.parametrize(
    ("concurrency", "options", "prefetch", "min_demand"),
    [
        (10, {}, 10, 2),
        (32, {}, 32, 6),
        (1, {}, 1, 1),
        (10, {"prefetch": 0}, 0, 1),
        (10, {"prefetch": 5, "min_demand": 3}, 5, 3),
    ],
)
def test_prefetch_and_min_demand_follow_the_concurrency_unless_given(
    concurrency: int, options: dict[str, int], prefetch: int, min_demand: int
) -> None:
    cfg = build_config("postgresql://localhost/x", {"q": concurrency}, **options)
    assert cfg.prefetch_for(concurrency) == prefetch
    assert cfg.min_demand_for(concurrency) == min_demand


def test_an_explicit_min_demand_beyond_the_sized_buffer_is_refused() -> None:
    with pytest.raises(gd.ConfigurationError, match=r"min_demand \(30\).*\(20\)"):
        gd.Engine("postgresql://localhost/x", queues={"q": 10}, min_demand=30)
    gd.Engine("postgresql://localhost/x", queues={"q": 10}, min_demand=20)  # 10 + 10


async def test_the_default_buffer_holds_as_many_rows_as_slots(make_engine, conn, schema) -> None:
    GATES["buffer"] = asyncio.Event()
    RUNS.clear()
    async with make_engine(queues={"default": 2}) as engine:
        ids = await engine.insert_all([gd.Spec(Gated, state={"gate": "buffer"})] * 7)

        async def four_claimed_two_started() -> bool:
            # The started steps' tasks may not have run their first line yet.
            return await _executing(conn, schema) == 4 and len(RUNS) == 2

        await wait_for(four_claimed_two_started, timeout=10)
        sched = engine._node.schedulers["default"]  # type: ignore[union-attr]
        assert len(sched.running) == 2 and len(sched.held()) == 4
        assert len(RUNS) == 2  # the buffered two are claimed, not started
        GATES["buffer"].set()
        results = [await finished(engine, i) for i in ids]
    assert [r.status for r in results] == ["done"] * 7
    assert sorted(RUNS) == sorted(ids)  # every row ran exactly once


async def test_prefetch_zero_claims_only_for_free_slots(make_engine, conn, schema) -> None:
    GATES["nobuffer"] = asyncio.Event()
    async with make_engine(queues={"default": 2}, prefetch=0) as engine:
        ids = await engine.insert_all([gd.Spec(Gated, state={"gate": "nobuffer"})] * 5)

        async def two_running() -> bool:
            sched = engine._node.schedulers["default"]  # type: ignore[union-attr]
            return len(sched.running) == 2

        await wait_for(two_running, timeout=10)
        assert await _executing(conn, schema) == 2
        GATES["nobuffer"].set()
        for i in ids:
            await finished(engine, i)


async def test_a_buffered_claim_past_its_lease_is_never_started(
    make_engine, conn, schema, caplog: pytest.LogCaptureFixture
) -> None:
    """The node stalled past a lease (frozen, cut off): the reaper may have handed its
    buffered row to another worker. When a slot frees, that claim is not started — the
    step would run twice — and its token-guarded release leaves the new owner alone."""
    GATES["lapse"] = asyncio.Event()
    RUNS.clear()
    caplog.set_level(logging.WARNING, "gen_durable")
    async with make_engine(queues={"default": 1}, prefetch=1) as engine:
        first, second = await engine.insert_all([gd.Spec(Gated, state={"gate": "lapse"})] * 2)

        async def both_claimed() -> bool:
            return await _executing(conn, schema) == 2

        await wait_for(both_claimed, timeout=10)
        sched = engine._node.schedulers["default"]  # type: ignore[union-attr]
        (running,) = sched.running
        buffered = second if running == first else first
        # As if the lease had lapsed while the node stood still, and another worker
        # had been given the row since.
        sched._buffer._lease_until[buffered] = time.monotonic() - 1
        await conn.execute(
            f"UPDATE \"{schema}\".gen_durable SET locked_by = 'other:1' WHERE id = %s",
            (buffered,),
        )
        GATES["lapse"].set()
        await finished(engine, running)

        async def handed_back() -> bool:
            return "outlived their lease" in caplog.text and not sched.held()

        await wait_for(handed_back, timeout=10)
        row = await (
            await conn.execute(
                f'SELECT status, locked_by FROM "{schema}".gen_durable WHERE id = %s', (buffered,)
            )
        ).fetchone()
    assert [running] == RUNS  # the lapsed claim never ran
    assert row == ("executing", "other:1")  # the new owner's claim was left alone


async def test_a_buffered_claim_the_heartbeat_extends_keeps_its_lease(make_engine) -> None:
    """Buffered longer than a lease, but heartbeated: it starts when its slot frees."""
    GATES["renewed"] = asyncio.Event()
    RUNS.clear()
    async with make_engine(
        queues={"default": 1}, prefetch=1, lease_ttl=1, heartbeat_interval=0.2, reap_interval=0.1
    ) as engine:
        ids = await engine.insert_all([gd.Spec(Gated, state={"gate": "renewed"})] * 2)
        sched = engine._node.schedulers["default"]  # type: ignore[union-attr]
        picked = time.monotonic()

        async def buffered_past_a_lease() -> bool:
            return len(sched.held()) == 2 and time.monotonic() > picked + 1.5

        await wait_for(buffered_past_a_lease, timeout=10)
        GATES["renewed"].set()
        results = [await finished(engine, i) for i in ids]
    assert [r.status for r in results] == ["done"] * 2
    assert sorted(RUNS) == sorted(ids)


async def test_outcomes_of_one_loop_turn_share_one_commit(dsn, conn, schema) -> None:
    ids = await _claimed(conn, schema, 5)
    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
        dsn, min_size=1, max_size=2, kwargs={"autocommit": True}, open=False
    )
    await pool.open()
    stats = Stats()
    try:
        completer = Completer(pool, Queries(schema), stats)
        items = [Completion(i, f"n:{i}", "done", result="1") for i in ids]
        results = await asyncio.wait_for(asyncio.gather(*map(completer.commit, items)), 10)
        # One alone, on an idle completer, still goes at once (no timer in the way).
        more = await _claimed(conn, schema, 1)
        alone = await asyncio.wait_for(
            completer.commit(Completion(more[0], f"n:{more[0]}", "done", result="1")), 10
        )
    finally:
        await pool.close()
    assert results == [("done", None)] * 5 and alone == ("done", None)
    assert stats.commits == 2 and stats.outcomes == 6
