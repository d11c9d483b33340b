"""Procrastinate on the benchmark's workloads (run with its own virtualenv python).

``python procrastinate_bench.py {jobs,chain,enqueue} --dsn DSN --n N [--defaults]
[--concurrency N]`` prints one result line.

Settings: by default those of Procrastinate's concurrency how-to: one worker with
``concurrency=10`` async jobs in flight (10 measured faster than 30 for no-op jobs on 2
cores), ``listen_notify=True`` (the default), async tasks, and a psycopg pool of 12.
``--defaults``: the worker's defaults (``concurrency=1``) and the connector's own pool
(psycopg_pool's, 4 connections). ``--concurrency N``: ``concurrency=N`` and a pool of
``min(N, POOL_CAP) + 2`` (the server's ``max_connections`` is shared by every run).
``chain``: each instance is 3 jobs; job k defers job k+1 before it returns. The worker
runs with ``wait=True`` and is stopped once every job has run; the timed window closes
when ``run_worker_async`` has returned (running jobs finished and their status
committed). ``enqueue``: one ``batch_defer_async`` of ``n`` jobs, timed.
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
from common import PEER_CHAIN_LENGTH, PgMeter, Window, enqueue_rates, peer_main, peer_rates

CONCURRENCY = 10
POOL_SIZE = 12
POOL_CAP = 30
COMMON = {"listen_notify": True, "tasks": "async"}


def configure(defaults: bool, concurrency: int | None) -> dict[str, Any]:
    if concurrency is not None:
        pool = min(concurrency, POOL_CAP) + 2
        return {"concurrency": concurrency, "pool_size": pool, **COMMON}
    if defaults:
        return {"concurrency": 1, "pool_size": None, **COMMON}  # None: the connector's own
    return {"concurrency": CONCURRENCY, "pool_size": POOL_SIZE, **COMMON}


def connector(dsn: str, pool_size: int | None) -> PsycopgConnector:
    if pool_size is None:
        return PsycopgConnector(conninfo=dsn)
    return PsycopgConnector(conninfo=dsn, min_size=pool_size, max_size=pool_size)


async def run_enqueue(dsn: str, n: int) -> dict[str, Any]:
    app = App(connector=connector(dsn, None))

    @app.task(name="noop")
    async def noop() -> None:
        return None

    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        jobs: list[dict[str, Any]] = [{}] * n
        await noop.defer_async()  # warm-up, untimed: the pool's connection is open
        meter = PgMeter(dsn)
        meter.start(quiet=False)
        window = Window()
        await noop.batch_defer_async(*jobs)
        window.close()
        meter.stop_cpu()
        stored = await app.connector.execute_query_one_async(
            "SELECT count(*) AS n FROM procrastinate_jobs"
        )
    if stored["n"] != n + 1:
        raise SystemExit(f"{stored['n']} jobs stored, expected {n + 1}")
    return enqueue_rates(window, meter.finish(), n, api="batch_defer_async")


async def run(scenario: str, dsn: str, n: int, settings: dict[str, Any]) -> dict[str, Any]:
    if scenario == "enqueue":
        return await run_enqueue(dsn, n)
    app = App(connector=connector(dsn, settings["pool_size"]))
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
                concurrency=settings["concurrency"],
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
    peer_main(lambda s, d, n, c: asyncio.run(run(s, d, n, c)), configure)
