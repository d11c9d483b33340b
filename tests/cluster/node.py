"""One worker node of the test cluster, run as a real OS process.

::

    python -m tests.cluster.node --dsn DSN --schema S --node-id n1 [--concurrency 6] ...

Starts a ``gd.Engine`` with the workload machines and fast lease timings, prints
``ready <node-id>`` on stdout once its workers run, and stops gracefully on SIGTERM
or SIGINT (``engine.stop()``: buffered rows released at once, running steps given
``drain_timeout``, SPEC §8). Logs go to stderr, one line per record, so a test can
count them (an error flood or a crash loop shows in the count).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

import gen_durable as gd

from .workload import LOG, MACHINES


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.cluster.node")
    p.add_argument("--dsn", required=True)
    p.add_argument("--schema", required=True)
    p.add_argument("--node-id", required=True)
    p.add_argument("--concurrency", type=int, default=6)
    p.add_argument("--lease-ttl", type=float, default=2.5)
    p.add_argument("--heartbeat", type=float, default=0.5)
    p.add_argument("--reap", type=float, default=0.5)
    p.add_argument("--poll", type=float, default=0.05)
    p.add_argument("--max-poll", type=float, default=0.5)
    p.add_argument("--drain-timeout", type=float, default=3.0)
    p.add_argument("--pause", type=float, default=0.02, help="max random sleep inside a step")
    return p.parse_args(argv)


async def run(args: argparse.Namespace) -> None:
    LOG.configure(args.dsn, args.schema, args.node_id, args.pause)
    await LOG.open()
    engine = gd.Engine(
        args.dsn,
        schema=args.schema,
        queues={"default": args.concurrency},
        fsms=MACHINES,
        node_id=args.node_id,
        lease_ttl=args.lease_ttl,
        heartbeat_interval=args.heartbeat,
        reap_interval=args.reap,
        poll_interval=args.poll,
        max_poll_interval=args.max_poll,
        drain_timeout=args.drain_timeout,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await engine.start()
    print(f"ready {args.node_id}", flush=True)
    try:
        await stop.wait()
    finally:
        await engine.stop()
        # The log stays open through the drain: running steps still record.
        await LOG.close()
    print(f"stopped {args.node_id}", flush=True)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.WARNING,
        format=f"%(asctime)s {args.node_id} %(levelname)s %(name)s: %(message)s",
    )
    # The workload raises on purpose (Flaky) and its handle answers: those step
    # tracebacks are not the engine's, and the fault tests count tracebacks as crashes.
    logging.getLogger("gen_durable.step").setLevel(logging.ERROR)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
