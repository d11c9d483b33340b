"""One worker node for the flow-control cluster tests, run as a real OS process.

::

    python -m tests.flow.node --dsn DSN --schema S --node-id n1 [--hang] [--schedule]

Its machines record each step's start and end (wall clock: every node runs on the
same host) in the schema's ``flow_log`` table, so a test can check overlaps and rates
across nodes. ``--hang`` makes ``Span`` steps sleep for a minute (a worker to
SIGKILL while it holds its slots); ``--schedule`` gives the node the every-second
schedule ``tick``. Prints ``ready <node-id>`` once running; SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

import psycopg

import gen_durable as gd

from .machines import LOG, TICK, Call, Span, Tick


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.flow.node")
    p.add_argument("--dsn", required=True)
    p.add_argument("--schema", required=True)
    p.add_argument("--node-id", required=True)
    p.add_argument("--concurrency", type=int, default=6)
    p.add_argument("--prefetch", type=int, default=None)
    p.add_argument("--lease-ttl", type=float, default=2.5)
    p.add_argument("--hang", action="store_true")
    p.add_argument("--schedule", action="store_true")
    return p.parse_args(argv)


async def run(args: argparse.Namespace) -> None:
    LOG.update(schema=args.schema, node=args.node_id, hang=args.hang, lock=asyncio.Lock())
    LOG["conn"] = await psycopg.AsyncConnection.connect(args.dsn, autocommit=True)
    engine = gd.Engine(
        args.dsn,
        schema=args.schema,
        queues={"default": args.concurrency},
        prefetch=args.prefetch,
        fsms=[Span, Call, Tick],
        schedules=[TICK] if args.schedule else [],
        node_id=args.node_id,
        lease_ttl=args.lease_ttl,
        heartbeat_interval=args.lease_ttl / 5,
        reap_interval=0.5,
        poll_interval=0.05,
        max_poll_interval=0.2,
        drain_timeout=2.0,
    )
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, stopping.set)
    async with engine:  # stop() drains on the way out, SIGTERM or not
        print(f"ready {args.node_id}", flush=True)
        await stopping.wait()
    await LOG["conn"].close()


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
