"""The machines of the flow-control cluster tests (a module of their own, so that their
names are the same in the node processes and in the tests that insert them)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
from psycopg import sql

import gen_durable as gd

LOG: dict[str, Any] = {}


async def record(tag: str, started: float, ended: float | None = None) -> None:
    async with LOG["lock"]:
        conn: psycopg.AsyncConnection[Any] = LOG["conn"]
        await conn.execute(
            sql.SQL(
                "INSERT INTO {}.flow_log (tag, node, started, ended) VALUES (%s, %s, %s, %s)"
            ).format(sql.Identifier(LOG["schema"])),
            (tag, LOG["node"], started, ended),
        )


class Span(gd.Job):
    """A step that takes a while: its start and end are recorded."""

    async def perform(self, args: dict[str, Any]) -> Any:
        started = time.time()
        # The step's own duration is what the slot tests observe (a "hang" holds its
        # slot until the worker is killed), not a wait for a condition.
        await asyncio.sleep(60 if LOG["hang"] else args.get("pause", 0.05))
        await record(args["tag"], started, time.time())
        return None


class Call(gd.Job):
    """A call to a rate-limited API: its start is recorded."""

    async def perform(self, args: dict[str, Any]) -> Any:
        await record(args["tag"], time.time())
        return None


class Tick(gd.Job):
    def perform(self, args: dict[str, Any]) -> Any:
        return args


TICK = gd.Schedule("tick", Tick, "* * * * * *", state=lambda slot: {"slot": slot.isoformat()})
