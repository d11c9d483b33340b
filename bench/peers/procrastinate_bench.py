"""Procrastinate on the benchmark's workloads (run with its own virtualenv python).

``python procrastinate_bench.py {jobs,chain} --dsn DSN --n N`` prints one result line.

Settings follow Procrastinate's concurrency how-to: one worker with
``concurrency=30`` async sub-workers, ``listen_notify=True`` (the default), async tasks,
and a psycopg pool large enough for every sub-worker (32 connections). ``chain``:
each instance is 3 jobs; job k defers job k+1 before it returns. The worker runs with
``wait=True`` and is stopped once every job has run; the timed window closes when
``run_worker_async`` has returned (running jobs finished and their status committed).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from typing import Any

from procrastinate import App, PsycopgConnector

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import PEER_CHAIN_LENGTH, PgMeter, Window, peer_main, peer_rates

CONCURRENCY = 10
POOL_SIZE = 12
SETTINGS = {
    "concurrency": CONCURRENCY,
    "listen_notify": True,
    "pool_size": POOL_SIZE,
    "tasks": "async",
}


async def run(scenario: str, dsn: str, n: int) -> dict[str, Any]:
    app = App(connector=PsycopgConnector(conninfo=dsn, min_size=POOL_SIZE, max_size=POOL_SIZE))
    done = 0
    total = n if scenario == "jobs" else n * PEER_CHAIN_LENGTH
    finished = asyncio.Event()

    def count() -> None:
        nonlocal done
        done += 1
        if done == total:
            finished.set()

    @app.task(name="noop")
    async def noop() -> None:
        count()

    @app.task(name="chain")
    async def chain(step: int) -> None:
        if step < PEER_CHAIN_LENGTH:
            await chain.defer_async(step=step + 1)
        count()

    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        task = noop if scenario == "jobs" else chain
        kwargs: dict[str, Any] = {} if scenario == "jobs" else {"step": 1}
        t0 = time.perf_counter()
        await task.batch_defer_async(*([kwargs] * n))
        enqueue_s = time.perf_counter() - t0

        meter = PgMeter(dsn)
        meter.start(quiet=False)
        window = Window()
        worker = asyncio.create_task(
            app.run_worker_async(
                concurrency=CONCURRENCY,
                listen_notify=True,
                wait=True,
                install_signal_handlers=False,
            )
        )
        await asyncio.wait_for(finished.wait(), timeout=600)
        worker.cancel()  # graceful: running jobs finish and record their status
        with contextlib.suppress(asyncio.CancelledError):
            await worker
        window.close()
        meter.stop_cpu()
    pg = meter.finish()
    return peer_rates(scenario, window, pg, n, done, enqueue_s)


if __name__ == "__main__":
    peer_main(lambda s, d, n: asyncio.run(run(s, d, n)), SETTINGS)
