"""DBOS on the benchmark's workloads (run with its own virtualenv python).

``python dbos_bench.py {jobs,chain} --dsn DSN --n N [--defaults]
[--concurrency N]`` prints one result line.

Settings: by default one DBOS process, one queue with its polling interval lowered to
0.01 s (the default is 1 s) and no concurrency limit, async workflows.
``--defaults``: the queue's defaults (1 s polling, no limit). ``--concurrency N``: the
queue's ``worker_concurrency=N`` (workflows in flight in this process), still polled
every 0.01 s: a slot freed waits for the next poll, so at the default 1 s a queue of
N slots could not start more than N workflows a second. ``jobs``: a no-op workflow per
job. ``chain``: one workflow per instance that runs 3 ``@DBOS.step`` functions (each
step's output is checkpointed, the durable-step equivalent). The workload is enqueued
with ``DBOSClient`` before the process launches, so the timed window (from ``launch`` to
every workflow recorded ``SUCCESS``) covers execution only. DBOS has no batch enqueue,
so it has no ``enqueue`` run (``n`` calls of ``enqueue_in_transaction`` in one
transaction measured slower here than the 8 threads of single calls ``jobs`` times).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
from dbos import DBOS, DBOSClient, DBOSConfig

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from common import (
    PEER_CHAIN_LENGTH,
    PgMeter,
    Window,
    as_url,
    peer_main,
    peer_rates,
)

APP = "gdbench"
QUEUE = "bench"
POLLING_INTERVAL = 0.01
ENQUEUE_THREADS = 8
DEFAULT_POLLING_INTERVAL = 1.0  # DBOS's own default for a queue
COMMON = {"workflows": "async", "enqueue_threads": ENQUEUE_THREADS}


def configure(defaults: bool, concurrency: int | None) -> dict[str, Any]:
    if concurrency is not None:
        return {
            "queue_polling_interval_sec": POLLING_INTERVAL,
            "worker_concurrency": concurrency,
            **COMMON,
        }
    if defaults:
        return {
            "queue_polling_interval_sec": DEFAULT_POLLING_INTERVAL,
            "worker_concurrency": None,
            **COMMON,
        }
    return {"queue_polling_interval_sec": POLLING_INTERVAL, "worker_concurrency": None, **COMMON}


done = 0


@DBOS.step(name="bench_step")
async def bench_step(k: int) -> int:
    return k


@DBOS.workflow(name="noop_wf")
async def noop_wf() -> None:
    global done
    done += 1


@DBOS.workflow(name="chain_wf")
async def chain_wf() -> None:
    global done
    for k in range(PEER_CHAIN_LENGTH):
        await bench_step(k)
    done += 1


def succeeded(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM dbos.workflow_status WHERE status = 'SUCCESS'"
        ).fetchone()
        assert row is not None
        return int(row[0])


def run(scenario: str, dsn: str, n: int, settings: dict[str, Any]) -> dict[str, Any]:
    url = as_url(dsn)
    dbos_cli = os.path.join(os.path.dirname(sys.executable), "dbos")
    subprocess.run([dbos_cli, "migrate", "-s", url], check=True, capture_output=True)
    client = DBOSClient(
        system_database_url=url, application_name=APP, system_database_pool_size=ENQUEUE_THREADS
    )
    client.register_queue(
        QUEUE,
        polling_interval_sec=settings["queue_polling_interval_sec"],
        worker_concurrency=settings["worker_concurrency"],
        application_name=APP,
    )
    workflow = "noop_wf" if scenario == "jobs" else "chain_wf"
    # DBOS has no batch enqueue: one call per workflow, from ENQUEUE_THREADS threads.
    t0 = time.perf_counter()
    with ThreadPoolExecutor(ENQUEUE_THREADS) as pool:
        list(
            pool.map(
                lambda _: client.enqueue({"queue_name": QUEUE, "workflow_name": workflow}), range(n)
            )
        )
    enqueue_s = time.perf_counter() - t0
    client.destroy()

    config: DBOSConfig = {"name": APP, "system_database_url": url, "run_migrations": False}
    DBOS(config=config)
    meter = PgMeter(dsn)
    meter.start()
    window = Window()
    DBOS.launch()
    deadline = time.monotonic() + 600
    while done < n:
        if time.monotonic() > deadline:
            raise SystemExit(f"dbos ran {done} of {n} workflows within the deadline")
        time.sleep(0.002)
    while succeeded(dsn) < n:
        if time.monotonic() > deadline:
            raise SystemExit("dbos workflows did not all record SUCCESS")
        time.sleep(0.005)
    window.close()
    meter.stop_cpu()
    DBOS.destroy()
    pg = meter.finish()
    steps = done if scenario == "jobs" else done * PEER_CHAIN_LENGTH
    return peer_rates(scenario, window, pg, n, steps, enqueue_s)


if __name__ == "__main__":
    peer_main(run, configure, scenarios=("jobs", "chain"))
