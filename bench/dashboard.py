"""How fast the dashboard's overview and list pages answer on a big table (SPEC §25).

::

    .venv/bin/python bench/dashboard.py [--rows 1000000] [--dsn DSN] [--repeat 20]

Creates a throwaway schema, seeds ``--rows`` instances (70% terminal, see
``_seed.py``), then requests each page through the real ASGI app in process (httpx) and
prints the median and worst latency of each. The target is under 200 ms for each page
on 1,000,000 rows; the overview never counts terminal rows exactly, so it must not
grow with them. The schema is dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import sys
import time
import uuid

import httpx
import psycopg
from _seed import seed

import gen_durable as gd
from gen_durable.dashboard import create_app

PAGES = {
    "overview": "/",
    "list": "/instances",
    "list status=runnable": "/instances?status=runnable",
    "list queue=emails": "/instances?queue=emails",
    "list page 2": None,  # the keyset page after the first one, found at run time
}
TARGET_MS = 200.0


async def measure(dsn: str, schema: str, repeat: int) -> dict[str, list[float]]:
    app = create_app(dsn, schema=schema)
    timings: dict[str, list[float]] = {}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://bench"
    ) as client:
        first = await client.get("/instances")
        found = re.search(r'id="next" href="([^"]+)"', first.text)
        assert found, "the first page has no next link"
        page2 = found.group(1).replace("&amp;", "&")
        for name, path in PAGES.items():
            url = path or page2
            await client.get(url)  # warm: connection, plans
            laps = []
            for _ in range(repeat):
                started = time.perf_counter()
                answer = await client.get(url)
                laps.append((time.perf_counter() - started) * 1000)
                assert answer.status_code == 200, (url, answer.status_code)
            timings[name] = laps
    await app.dashboard.close()
    return timings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=os.environ.get("GEN_DURABLE_TEST_DSN"))
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    schema = "bench_dash_" + uuid.uuid4().hex[:8]
    gd.migrate_sync(args.dsn, schema=schema)
    try:
        with psycopg.connect(args.dsn, autocommit=True) as conn:
            started = time.perf_counter()
            counts = seed(conn, schema, args.rows)
            print(f"seeded {args.rows:,} rows in {time.perf_counter() - started:.0f}s: {counts}")
            # What autovacuum does to a lived-in table: the visibility map lets the live
            # counts run as index-only scans.
            conn.execute(f'VACUUM "{schema}".gen_durable')
        timings = asyncio.run(measure(args.dsn, schema, args.repeat))
        worst_median = 0.0
        for name, laps in timings.items():
            median = statistics.median(laps)
            worst_median = max(worst_median, median)
            print(f"{name:24} median {median:7.1f} ms   max {max(laps):7.1f} ms")
        verdict = "ok" if worst_median < TARGET_MS else "SLOW"
        print(f"{verdict}: every page's median under {TARGET_MS:.0f} ms on {args.rows:,} rows")
        return 0 if verdict == "ok" else 1
    finally:
        with psycopg.connect(args.dsn, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


if __name__ == "__main__":
    sys.exit(main())
