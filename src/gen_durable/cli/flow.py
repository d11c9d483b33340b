"""``gen-durable limits set|list|delete`` and ``gen-durable schedules`` (SPEC §23)."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
from typing import Any

from .._db import runner
from .._db.queries import Queries
from ..flow import RateLimit
from ..schedule import next_slot
from .common import (
    CommandError,
    connect,
    dsn_of,
    open_client,
    option,
    print_json,
    require_schema,
    schema_of,
    table,
)


def _show_limits(args: argparse.Namespace, limits: list[RateLimit]) -> None:
    if option(args, "json"):
        print_json([{f: getattr(r, f) for f in RateLimit.__slots__} for r in limits])
        return
    if not limits:
        print("no rate limits (gen-durable limits set NAME RATE [--per S] [--burst N])")
        return
    rows = [(r.name, r.rate, r.per, r.burst, r.updated_at) for r in limits]
    print(table(("name", "rate", "per (s)", "burst", "updated"), rows))


def cmd_limits_set(args: argparse.Namespace) -> int:
    async def run() -> RateLimit:
        engine = await open_client(args)
        try:
            return await engine.set_rate_limit(args.name, args.rate, per=args.per, burst=args.burst)
        finally:
            await engine.stop()

    _show_limits(args, [asyncio.run(run())])
    return 0


def cmd_limits_list(args: argparse.Namespace) -> int:
    async def run() -> list[RateLimit]:
        engine = await open_client(args)
        try:
            return await engine.rate_limits()
        finally:
            await engine.stop()

    _show_limits(args, asyncio.run(run()))
    return 0


def cmd_limits_delete(args: argparse.Namespace) -> int:
    async def run() -> bool:
        engine = await open_client(args)
        try:
            return await engine.delete_rate_limit(args.name)
        finally:
            await engine.stop()

    if not asyncio.run(run()):
        raise CommandError(f"no rate limit named {args.name!r}; nothing was deleted")
    if option(args, "json"):
        print_json({"deleted": args.name})
    else:
        print(f"deleted rate limit {args.name!r}; rows naming it are held until it is set again")
    return 0


def cmd_schedules(args: argparse.Namespace) -> int:
    dsn, schema = dsn_of(args), schema_of(args)

    async def run() -> list[Any]:
        async with await connect(dsn) as conn:
            await require_schema(conn, schema)
            return await runner.fetch(conn, Queries(schema).schedules())

    now = dt.datetime.now(dt.UTC)
    rows = []
    for s in asyncio.run(run()):
        try:
            upcoming: dt.datetime | str = next_slot(s.cron, s.timezone, now)
        except Exception as exc:  # a row written by a newer parser: say so, list the rest
            upcoming = f"? ({exc})"
        rows.append((s.name, s.cron, s.timezone, s.last_slot, upcoming))
    if option(args, "json"):
        keys = ("name", "cron", "timezone", "last_slot", "next_slot")
        print_json([dict(zip(keys, r, strict=True)) for r in rows])
        return 0
    if not rows:
        print("no schedules yet (a node registers its schedules when it starts)")
        return 0
    print(table(("name", "cron", "timezone", "last slot", "next slot"), rows))
    return 0
