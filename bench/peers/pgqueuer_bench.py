"""PgQueuer on the benchmark's workloads (run with PgQueuer's own virtualenv python).

``python pgqueuer_bench.py {jobs,chain,enqueue} --dsn DSN --n N [--defaults]
[--concurrency N]`` prints one result line.

Settings: by default those of PgQueuer's own drain benchmark: 5 consumers, each a
``PgQueuer`` on its own asyncpg connection with ``batch_size=10`` and no cap on the
jobs in flight, ``mode=drain``, uvloop. ``--defaults``: one consumer with ``run``'s
defaults (``batch_size=10``, ``max_concurrent_tasks=None``). ``--concurrency N``: one
consumer with ``max_concurrent_tasks=N`` and the largest batch PgQueuer accepts with
it (``batch_size=N // 2``: ``run`` refuses a cap below twice the batch). ``chain``:
each instance is 3 jobs; job k enqueues job k+1 (from a shared asyncpg pool) before it
returns. The timed window closes when every consumer's ``run`` has returned (queue
empty, status log flushed). ``enqueue``: one ``Queries.enqueue`` call with lists of
``n`` rows, timed, into a queue nobody serves.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

import asyncpg
import uvloop
from pgqueuer import PgQueuer
from pgqueuer.db import AsyncpgDriver, AsyncpgPoolDriver
from pgqueuer.domain.types import QueueExecutionMode
from pgqueuer.models import Job
from pgqueuer.queries import Queries
from psycopg import conninfo

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import PEER_CHAIN_LENGTH, PgMeter, Window, enqueue_rates, peer_main, peer_rates

CONSUMERS = 5
BATCH_SIZE = 10
COMMON = {"driver": "asyncpg", "mode": "drain", "loop": "uvloop"}


def configure(defaults: bool, concurrency: int | None) -> dict[str, Any]:
    if concurrency is not None:
        if concurrency < 2:
            raise SystemExit("pgqueuer: --concurrency must be at least 2 (twice a batch of 1)")
        shape = {"consumers": 1, "batch_size": concurrency // 2}
        return {**shape, "max_concurrent_tasks": concurrency, **COMMON}
    if defaults:
        return {"consumers": 1, "batch_size": 10, "max_concurrent_tasks": None, **COMMON}
    return {
        "consumers": CONSUMERS,
        "batch_size": BATCH_SIZE,
        "max_concurrent_tasks": None,
        **COMMON,
    }


def connect_args(dsn: str) -> dict[str, Any]:
    """asyncpg takes URLs only: pass a key=value DSN as keywords."""
    params = conninfo.conninfo_to_dict(dsn)
    names = {"host": "host", "port": "port", "user": "user", "password": "password"}
    out: dict[str, Any] = {names[k]: v for k, v in params.items() if k in names}
    out["database"] = params.get("dbname")
    return out


async def enqueue(queries: Queries, entrypoint: str, n: int, payload: bytes) -> float:
    t0 = time.perf_counter()
    await queries.enqueue([entrypoint] * n, [payload] * n, [0] * n)
    return time.perf_counter() - t0


async def run_enqueue(dsn: str, n: int) -> dict[str, Any]:
    setup = await asyncpg.connect(**connect_args(dsn))
    queries = Queries(AsyncpgDriver(setup))
    await queries.install()
    entrypoints, payloads, priorities = ["noop"] * n, [b"1"] * n, [0] * n
    meter = PgMeter(dsn)
    meter.start(quiet=False)
    window = Window()
    await queries.enqueue(entrypoints, payloads, priorities)
    window.close()
    meter.stop_cpu()
    row = await setup.fetchval("SELECT count(*) FROM pgqueuer")
    await setup.close()
    if row != n:
        raise SystemExit(f"{row} rows enqueued, expected {n}")
    return enqueue_rates(window, meter.finish(), n, api="Queries.enqueue(lists)")


async def run(scenario: str, dsn: str, n: int, settings: dict[str, Any]) -> dict[str, Any]:
    if scenario == "enqueue":
        return await run_enqueue(dsn, n)
    setup = await asyncpg.connect(**connect_args(dsn))
    await Queries(AsyncpgDriver(setup)).install()
    entrypoint = "noop" if scenario == "jobs" else "chain"
    enqueue_s = await enqueue(Queries(AsyncpgDriver(setup)), entrypoint, n, b"1")
    await setup.close()
    done = 0

    pool = await asyncpg.create_pool(min_size=2, max_size=4, **connect_args(dsn))
    chain_q = Queries(AsyncpgPoolDriver(pool))
    consumers: list[PgQueuer] = []
    for _ in range(settings["consumers"]):
        pgq = PgQueuer(AsyncpgDriver(await asyncpg.connect(**connect_args(dsn))))

        @pgq.entrypoint("noop")
        async def noop(job: Job) -> None:
            nonlocal done
            done += 1

        @pgq.entrypoint("chain")
        async def chain(job: Job) -> None:
            nonlocal done
            step = int(job.payload or b"1")
            if step < PEER_CHAIN_LENGTH:
                await chain_q.enqueue("chain", str(step + 1).encode(), 0)
            done += 1

        consumers.append(pgq)

    meter = PgMeter(dsn)
    meter.start(quiet=False)
    window = Window()
    await asyncio.gather(
        *(
            c.run(
                batch_size=settings["batch_size"],
                max_concurrent_tasks=settings["max_concurrent_tasks"],
                mode=QueueExecutionMode.drain,
            )
            for c in consumers
        )
    )
    window.close()
    meter.stop_cpu()
    await pool.close()
    for c in consumers:
        conn = getattr(c.connection, "_connection", None) or getattr(
            c.connection, "connection", None
        )
        if conn is not None and not conn.is_closed():
            await conn.close()
    pg = meter.finish()
    return peer_rates(scenario, window, pg, n, done, enqueue_s)


if __name__ == "__main__":
    peer_main(lambda s, d, n, c: uvloop.run(run(s, d, n, c)), configure)
