"""Crash loops end (SPEC §5): a step whose lease expires ``crash_limit`` times is
failed by the reaper, with telemetry and a log line — in process, and with real
worker processes that die inside the step."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

import gen_durable as gd

from .conftest import wait_for
from .test_engine_basics import finished

GATE: dict[str, asyncio.Event] = {}  # made on the test's own loop


class Stuck(gd.FSM):
    """Never ends on its own: only an expired lease moves it."""

    async def step(self, step: str, ctx: gd.Context[dict[str, Any]]) -> gd.Outcome:
        await GATE["stuck"].wait()
        return gd.Done()


def limit_text(n: int, step: str) -> str:
    return f"lease expired {n} times on step '{step}': the worker died or froze while running it"


async def test_crash_limit_is_validated(make_engine) -> None:
    for bad in (0, -1, 1.5, True, "3"):
        with pytest.raises(gd.ConfigurationError, match="crash_limit"):
            make_engine(crash_limit=bad)
    assert make_engine().config.crash_limit == 10
    assert make_engine(crash_limit=1).config.crash_limit == 1


async def test_the_reaper_fails_a_row_at_the_crash_limit(make_engine, conn, schema, caplog) -> None:
    events: list[tuple[str, dict[str, Any], dict[str, Any]]] = []

    def record(event: str, measurements: Any, metadata: Any) -> None:
        events.append((event, dict(measurements), dict(metadata)))

    for event in ("reaper.reaped", "reaper.poisoned"):
        gd.telemetry.attach(event, record)
    GATE["stuck"] = asyncio.Event()
    try:
        with caplog.at_level(logging.WARNING, logger="gen_durable"):
            # Concurrency 3: each expiry leaves a stuck run holding its slot.
            async with make_engine(
                queues={"default": 3},
                crash_limit=2,
                lease_ttl=30,
                heartbeat_interval=9,
                reap_interval=0.05,
            ) as engine:
                iid = await engine.insert(Stuck)
                for expiries in (1, 2):

                    async def running(n: int = expiries) -> bool:
                        inst = await engine.get(iid)
                        return inst is not None and (inst.status, inst.attempt) == (
                            "executing",
                            n - 1,
                        )

                    await wait_for(running)
                    # As if the node running it had frozen past lease_ttl.
                    await conn.execute(
                        f'UPDATE "{schema}".gen_durable SET lease_expires_at = now() - '
                        "interval '1 second' WHERE id = %s",
                        (iid,),
                    )
                inst = await finished(engine, iid)
                GATE["stuck"].set()  # the stuck runs return now: their outcomes are stale
                await wait_for(lambda: asyncio.sleep(0, engine.stats.steps == 2))
                assert await engine.get(iid) == inst
    finally:
        for event in ("reaper.reaped", "reaper.poisoned"):
            gd.telemetry.detach(event, record)
    assert (inst.status, inst.last_error) == ("failed", limit_text(2, "start"))
    assert (inst.attempt, inst.crash_count) == (1, 2)
    assert [e["type"] for e in inst.errors] == ["LeaseExpired", "LeaseExpired"]
    assert events == [
        ("reaper.reaped", {"count": 1}, {"ids": [iid]}),
        ("reaper.poisoned", {"count": 1}, {"ids": [iid]}),
    ]
    assert engine.stats.reaped == 1 and engine.stats.poisoned == 1
    (line,) = [r for r in caplog.records if "crash_limit" in r.getMessage()]
    assert line.levelno == logging.ERROR and str(iid) in line.getMessage()


CRASH_MODULE = """
import os
import gen_durable as gd

class Exits(gd.Job, name="crashloop.Exits"):
    async def perform(self, args, ctx):
        with open(os.path.join(os.environ["CRASH_DIR"], f"run-{os.getpid()}"), "w") as f:
            f.write(str(ctx.attempt))
        os._exit(137)  # the process dies inside the step, every time
"""

WORKER = """
import asyncio, os, sys
sys.path.insert(0, os.environ["CRASH_DIR"])
import crashloop
import gen_durable as gd

async def main():
    engine = gd.Engine(os.environ["DSN"], schema=os.environ["SCHEMA"], crash_limit=3,
                       lease_ttl=1, heartbeat_interval=0.3, reap_interval=0.2,
                       poll_interval=0.05, max_poll_interval=0.2)
    async with engine:
        await asyncio.Event().wait()

asyncio.run(main())
"""


class ExitsStandIn(gd.Job, name="crashloop.Exits"):
    """The workers' job under its name and version, so this process can insert it; the
    test's own engine serves no queue and never runs it."""

    async def perform(self, args: dict[str, Any]) -> None:
        raise AssertionError("the test process never runs this job")


async def test_a_step_that_kills_every_worker_ends_failed(dsn, schema, make_engine) -> None:
    """Each worker that picks the job dies in it; a fresh one is started each time.
    After the third expiry the reaper fails the row instead of killing a fourth."""
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "crashloop.py").write_text(CRASH_MODULE)
        env = {**os.environ, "CRASH_DIR": tmp, "DSN": dsn, "SCHEMA": schema}
        workers: list[subprocess.Popen[bytes]] = []

        def spawn() -> None:
            workers.append(subprocess.Popen([sys.executable, "-c", WORKER], env=env))

        try:
            async with make_engine(queues={}) as client:
                iid = await client.insert(ExitsStandIn)

                async def settled() -> gd.Instance | None:
                    if workers[-1].poll() is not None:
                        assert len(workers) < 4, "a fourth worker died: the limit did not hold"
                        spawn()
                    inst = await client.get(iid)
                    assert inst is not None
                    return inst if inst.terminal else None

                spawn()
                inst = await wait_for(settled, timeout=90, interval=0.05)
                # The last worker reaped the row and survives: nothing runs it again.
                assert workers[-1].poll() is None
        finally:
            for w in workers:
                if w.poll() is None:
                    w.terminate()
                w.wait(10)
        runs = sorted(p.name for p in Path(tmp).glob("run-*"))
    assert [w.returncode for w in workers[:-1]] == [137, 137, 137]
    assert len(runs) == 3
    assert (inst.status, inst.last_error) == ("failed", limit_text(3, "start"))
    assert (inst.attempt, inst.crash_count) == (2, 3)
    assert [(e["type"], e["attempt"], e["step"]) for e in inst.errors] == [
        ("LeaseExpired", 0, "start"),
        ("LeaseExpired", 1, "start"),
        ("LeaseExpired", 2, "start"),
    ]
