"""Leases, heartbeats, the reaper, stale outcomes, drain and crash recovery (SPEC §5, §8, §18.2)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import gen_durable as gd

from .conftest import wait_for
from .test_engine_basics import finished

GATE: dict[str, asyncio.Event] = {}


class Blocker(gd.FSM):
    """Attempt 0 waits for the test to open its gate; later attempts finish at once."""

    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        if ctx.attempt == 0:
            gate = GATE.setdefault(ctx.state["gate"], asyncio.Event())
            await gate.wait()
            return gd.Done({"run": "first", "attempt": ctx.attempt})
        return gd.Done({"run": "second", "attempt": ctx.attempt})


async def _executing(engine: gd.Engine, iid: int) -> bool:
    inst = await engine.get(iid)
    return inst is not None and inst.status == "executing"


async def test_stale_outcome_after_same_node_reclaim_is_dropped(make_engine, conn, schema) -> None:
    """The reaper runs while the step is stuck; the same node re-claims the row (new
    token), finishes it; then the first run returns — and is dropped (§18.2)."""
    GATE["same"] = asyncio.Event()
    stale: list[dict[str, Any]] = []
    gd.telemetry.attach("outcome.stale", lambda e, m, md: stale.append({**m, **md}))
    try:
        async with make_engine(
            queues={"default": 2}, lease_ttl=30, heartbeat_interval=9, reap_interval=0.1
        ) as engine:
            iid = await engine.insert(Blocker, state={"gate": "same"})
            await wait_for(lambda: _executing(engine, iid))
            first = await engine.get(iid)
            assert first is not None and first.locked_by is not None
            # Expire the lease as if the node had been paused past lease_ttl.
            await conn.execute(
                f'UPDATE "{schema}".gen_durable SET lease_expires_at = now() - interval '
                "'1 second' WHERE id = %s",
                (iid,),
            )
            inst = await finished(engine, iid)
            assert inst.result == {"run": "second", "attempt": 1}
            # Same node, different claim token.
            assert first.locked_by.rsplit(":", 1)[0] == engine.node_id
            GATE["same"].set()
            await wait_for(lambda: asyncio.sleep(0, bool(stale)))
            after = await engine.get(iid)
    finally:
        gd.telemetry._handlers.pop("outcome.stale", None)
    assert after == inst  # nothing at all changed
    assert stale == [{"count": 1, "id": iid, "fsm": Blocker.__gd_name__, "kind": "done"}]


async def test_stale_outcome_from_another_node_is_dropped(make_engine, conn, schema) -> None:
    GATE["other"] = asyncio.Event()
    async with make_engine(lease_ttl=30, heartbeat_interval=9, reap_interval=30) as slow_node:
        iid = await slow_node.insert(Blocker, state={"gate": "other"})
        await wait_for(lambda: _executing(slow_node, iid))
        await conn.execute(
            f'UPDATE "{schema}".gen_durable SET lease_expires_at = now() - interval '
            "'1 second' WHERE id = %s",
            (iid,),
        )
        async with make_engine(reap_interval=0.1) as rescuer:
            inst = await finished(rescuer, iid)
        assert inst.result == {"run": "second", "attempt": 1}
        GATE["other"].set()
        await wait_for(lambda: asyncio.sleep(0, slow_node.stats.steps == 1))
        assert await slow_node.get(iid) == inst


class Sleeper(gd.FSM):
    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        await asyncio.sleep(ctx.state["secs"])  # a long step: the behaviour under test
        return gd.Done({"attempt": ctx.attempt})


async def test_long_step_kept_alive_by_heartbeats(make_engine) -> None:
    reaped: list[Any] = []
    gd.telemetry.attach("reaper.reaped", lambda e, m, md: reaped.append(md))
    try:
        async with make_engine(lease_ttl=1, heartbeat_interval=0.2, reap_interval=0.1) as engine:
            iid = await engine.insert(Sleeper, state={"secs": 3})
            inst = await finished(engine, iid)
    finally:
        gd.telemetry._handlers.pop("reaper.reaped", None)
    assert inst.result == {"attempt": 0}
    assert reaped == []


async def test_prefetched_rows_are_never_reaped(make_engine) -> None:
    reaped: list[Any] = []
    gd.telemetry.attach("reaper.reaped", lambda e, m, md: reaped.append(md))
    try:
        async with make_engine(
            queues={"default": 1},
            prefetch=5,
            lease_ttl=1,
            heartbeat_interval=0.2,
            reap_interval=0.1,
        ) as engine:
            ids = await engine.insert_all([gd.Spec(Sleeper, state={"secs": 0.4})] * 6)

            # All six are claimed at once: one running, five buffered.
            async def claimed() -> bool:
                return all([await _executing(engine, i) for i in ids])

            await wait_for(claimed, timeout=5, interval=0.01)
            results = [await finished(engine, i) for i in ids]
    finally:
        gd.telemetry._handlers.pop("reaper.reaped", None)
    # The buffered ones waited ~2.4 s in total, more than twice lease_ttl.
    assert [r.result for r in results] == [{"attempt": 0}] * 6
    assert reaped == []


async def test_graceful_drain_releases_buffered_rows_at_once(make_engine, conn, schema) -> None:
    GATE["drain"] = asyncio.Event()
    drained: list[dict[str, Any]] = []
    gd.telemetry.attach("scheduler.drain", lambda e, m, md: drained.append({**m, **md}))
    try:
        engine = make_engine(queues={"default": 1}, prefetch=5, lease_ttl=60, drain_timeout=5)
        await engine.start()
        ids = await engine.insert_all([gd.Spec(Blocker, state={"gate": "drain"})] * 6)

        async def all_claimed() -> bool:
            cur = await conn.execute(
                f"SELECT count(*) FROM \"{schema}\".gen_durable WHERE status = 'executing'"
            )
            row = await cur.fetchone()
            return row is not None and row[0] == 6

        await wait_for(all_claimed)
        stopping = asyncio.create_task(engine.stop())

        async def released() -> bool:
            cur = await conn.execute(
                f'SELECT count(*) FROM "{schema}".gen_durable '
                "WHERE status = 'runnable' AND attempt = 0 AND locked_by IS NULL"
            )
            row = await cur.fetchone()
            return row is not None and row[0] == 5

        # Released while the running step is still in flight: no lease wait.
        await wait_for(released, timeout=3)
        assert not stopping.done()
        GATE["drain"].set()
        await stopping
    finally:
        gd.telemetry._handlers.pop("scheduler.drain", None)
    cur = await conn.execute(
        f'SELECT status::text, count(*) FROM "{schema}".gen_durable GROUP BY 1 ORDER BY 1'
    )
    assert await cur.fetchall() == [("done", 1), ("runnable", 5)]
    assert drained == [{"released": 5, "in_flight": 1, "queue": "default"}]
    assert len(ids) == 6


async def test_drain_timeout_hands_stragglers_back(make_engine, conn, schema) -> None:
    GATE["never"] = asyncio.Event()
    engine = make_engine(lease_ttl=60, drain_timeout=0.3)
    await engine.start()
    iid = await engine.insert(Blocker, state={"gate": "never"})
    await wait_for(lambda: _executing(engine, iid))
    await engine.stop()
    cur = await conn.execute(
        f'SELECT status::text, attempt, locked_by FROM "{schema}".gen_durable WHERE id = %s',
        (iid,),
    )
    # Interrupted mid-step: counted as an attempt and runnable again right away.
    assert await cur.fetchone() == ("runnable", 1, None)


CRASH_MODULE = """
import os, time
import gen_durable as gd

MARK = os.environ["CRASH_MARK"]

class Crashy(gd.FSM, name="crash.Crashy"):
    def step(self, step, ctx):
        if ctx.attempt == 0:
            open(MARK + ".started", "w").write(str(os.getpid()))
            time.sleep(120)
        return gd.Done({"attempt": ctx.attempt, "pid": os.getpid()})

    def handle(self, error, ctx):
        open(MARK + ".handled", "w").write(repr(error))
        return gd.Stop(error)
"""

WORKER = """
import asyncio, os, sys
sys.path.insert(0, os.environ["CRASH_DIR"])
import crashmod
import gen_durable as gd

async def main():
    engine = gd.Engine(os.environ["DSN"], schema=os.environ["SCHEMA"], lease_ttl=2,
                       heartbeat_interval=0.5, reap_interval=0.2, poll_interval=0.05,
                       max_poll_interval=0.2)
    async with engine:
        await asyncio.Event().wait()

asyncio.run(main())
"""


async def test_sigkilled_worker_process_is_recovered_by_another(dsn, schema, make_engine) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "crashmod.py").write_text(CRASH_MODULE)
        mark = os.path.join(tmp, "mark")
        env = {**os.environ, "CRASH_DIR": tmp, "CRASH_MARK": mark, "DSN": dsn, "SCHEMA": schema}
        victim = subprocess.Popen([sys.executable, "-c", WORKER], env=env)
        try:
            sys.path.insert(0, tmp)
            os.environ["CRASH_MARK"] = mark
            import crashmod  # noqa: F401  (registers crash.Crashy in this process too)

            async with make_engine(queues={}) as client:
                iid = await client.insert(gd.registry.REGISTRY.get("crash.Crashy", 1))  # type: ignore[arg-type]

            await wait_for(lambda: asyncio.sleep(0, os.path.exists(mark + ".started")), 30)
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
            t_kill = time.monotonic()
            rescuer = subprocess.Popen([sys.executable, "-c", WORKER], env=env)
            try:
                async with make_engine(queues={}) as client:
                    inst = await finished(client, iid, timeout=30)
            finally:
                rescuer.terminate()
                rescuer.wait(10)
        finally:
            sys.path.remove(tmp)
            sys.modules.pop("crashmod", None)
            os.environ.pop("CRASH_MARK", None)
            if victim.poll() is None:
                victim.kill()
        assert inst.status == "done"
        assert inst.result["attempt"] >= 1
        assert inst.result["pid"] == rescuer.pid
        assert not os.path.exists(mark + ".handled")  # a crash is not an error
        assert time.monotonic() - t_kill < 30
