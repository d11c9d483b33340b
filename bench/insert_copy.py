"""``insert_all`` through its statement and through COPY, side by side in one run.

    python bench/insert_copy.py --dsn postgresql://… [--sizes 100,1000,100000] [--runs 5]

For each size, the two forms alternate ``--runs`` times on one engine (same pool, same
database, a schema of its own that no worker serves), each batch deleted before the
next, the batch being ``[Noop] * n`` (bare classes, the common batch): the
statement (``insert``/``insert_unkeyed``, what every batch used before) and COPY (what
``insert_all`` now picks for a batch without keys from ``COPY_MIN_ROWS`` rows). Both
timings include encoding the batch (``build_insert``). A last section splits one COPY
call into its phases: encoding in Python, the id reservation, the COPY itself and the
commit, with the client's CPU time beside the wall clock.

With ``--cpu``, each form instead runs ``--calls`` calls per size on a two-connection
pool, and the CPU both processes spent is reported per call: this client's
(``process_time``) and its PostgreSQL backend's (``/proc/<pid>/stat``, so the server
must run on this machine). CPU does not depend on what else the machine runs, where
wall-clock time does: it is what picks ``COPY_MIN_ROWS`` on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

import gen_durable as gd
from gen_durable._db import bulk, runner
from gen_durable._db.statements.inserts import NEW_ROWS_COPY
from gen_durable._inputs import build_insert


class Noop(gd.Job, name="bench.copy_noop"):
    async def perform(self, args: Any) -> None:
        return None


SPEC = Noop


async def _statement(eng: gd.Engine, n: int) -> int:
    rows = build_insert([SPEC] * n)
    inserted = await runner.fetch_one(eng._require_pool(), eng.queries.insert(rows))
    return len(inserted.ids or []) if inserted else 0


async def _copy(eng: gd.Engine, n: int) -> int:
    rows = build_insert([SPEC] * n)
    if not bulk.copyable(rows):  # below the threshold: force the COPY anyway
        first, make = bulk._plan(eng.queries, rows)
        got = await runner.copy_after(
            eng._require_pool(), first, NEW_ROWS_COPY, eng.queries.schema, make
        )
        return len(got.ids)
    return len(await bulk.insert_all(eng._require_pool(), eng.queries, rows))


async def _clear(dsn: str, schema: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as c:
        await c.execute(f'DELETE FROM "{schema}".gen_durable WHERE fsm = %s', (Noop.__gd_name__,))
        await c.execute(f'VACUUM "{schema}".gen_durable')


async def compare(dsn: str, schema: str, sizes: list[int], runs: int) -> None:
    forms: dict[str, Callable[[gd.Engine, int], Awaitable[int]]] = {
        "statement": _statement,
        "copy": _copy,
    }
    async with gd.Engine(dsn, queues={}, schema=schema) as eng:
        await _copy(eng, 10)  # warm the pool and the prepared statements
        await _statement(eng, 10)
        for n in sizes:
            times: dict[str, list[float]] = {k: [] for k in forms}
            for _ in range(runs):
                for name, form in forms.items():
                    await _clear(dsn, schema)
                    t0 = time.perf_counter()
                    got = await form(eng, n)
                    times[name].append(time.perf_counter() - t0)
                    assert got == n, (name, got, n)
            line = [f"n={n:>7,}"]
            for name, ts in times.items():
                med = statistics.median(ts)
                line.append(
                    f"{name}: median {med * 1000:8.1f} ms ({n / med:>9,.0f} rows/s), "
                    f"best {min(ts) * 1000:7.1f} ms"
                )
            print("  ".join(line), flush=True)
    await _clear(dsn, schema)


async def phases(dsn: str, schema: str, n: int, runs: int) -> None:
    async with gd.Engine(dsn, queues={}, schema=schema) as eng:
        queries = eng.queries
        for _ in range(runs):
            await _clear(dsn, schema)
            c0, t0 = time.process_time(), time.perf_counter()
            rows = build_insert([SPEC] * n)
            first, make = bulk._plan(queries, rows)
            t1 = time.perf_counter()
            async with eng._require_pool().connection() as conn:
                tx = conn.transaction()
                await tx.__aenter__()
                (head,) = await runner._rows(conn, first)
                t2 = time.perf_counter()
                await runner.copy_rows(conn, NEW_ROWS_COPY, schema, make(head))
                t3 = time.perf_counter()
                await tx.__aexit__(None, None, None)
            t4, c4 = time.perf_counter(), time.process_time()
            print(
                f"n={n:,}: encode {(t1 - t0) * 1000:.0f} ms, reserve {(t2 - t1) * 1000:.0f} ms, "
                f"copy {(t3 - t2) * 1000:.0f} ms, commit {(t4 - t3) * 1000:.0f} ms; "
                f"total {(t4 - t0) * 1000:.0f} ms ({n / (t4 - t0):,.0f} rows/s), "
                f"client CPU {(c4 - c0) * 1000:.0f} ms",
                flush=True,
            )
    await _clear(dsn, schema)


def _backend_cpu(pids: list[int]) -> float:
    """Seconds of CPU (user + system) local PostgreSQL backends have used."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


async def cpu(dsn: str, schema: str, sizes: list[int], calls: int) -> None:
    forms = {"statement": _statement, "copy": _copy}
    async with gd.Engine(dsn, queues={}, schema=schema, pool_size=2) as eng:
        pool = eng._require_pool()
        async with pool.connection() as one, pool.connection() as two:
            pid = [one.info.backend_pid, two.info.backend_pid]
        await _copy(eng, 10)
        await _statement(eng, 10)
        for n in sizes:
            used: dict[str, list[float]] = {k: [0.0, 0.0, 0.0] for k in forms}
            for _ in range(calls):
                for name, form in forms.items():
                    if n * calls > 200_000:
                        await _clear(dsn, schema)
                    c0, s0, t0 = time.process_time(), _backend_cpu(pid), time.perf_counter()
                    await form(eng, n)
                    acc = used[name]
                    acc[0] += time.process_time() - c0
                    acc[1] += _backend_cpu(pid) - s0
                    acc[2] += time.perf_counter() - t0
            line = [f"n={n:>7,}"]
            for name, (client, server, wall) in used.items():
                per_row = (client + server) / calls / n * 1e6
                line.append(
                    f"{name}: client {client / calls * 1000:7.2f} ms + server "
                    f"{server / calls * 1000:7.2f} ms CPU/call ({per_row:5.2f} µs/row; "
                    f"wall {wall / calls * 1000:7.1f} ms)"
                )
            print("  ".join(line), flush=True)
            await _clear(dsn, schema)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--schema", default="bench_copy")
    ap.add_argument("--sizes", default="10,100,300,1000,3000,10000,100000")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--phases", type=int, default=100_000, help="rows of the phase split (0: none)")
    ap.add_argument("--cpu", action="store_true", help="CPU per call instead of wall clock")
    ap.add_argument("--calls", type=int, default=50, help="calls per form and size (--cpu)")
    args = ap.parse_args()
    gd.migrate_sync(args.dsn, schema=args.schema)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.cpu:
        asyncio.run(cpu(args.dsn, args.schema, sizes, args.calls))
        return
    asyncio.run(compare(args.dsn, args.schema, sizes, args.runs))
    if args.phases:
        asyncio.run(phases(args.dsn, args.schema, args.phases, args.runs))


if __name__ == "__main__":
    main()
