"""The lease heartbeat (SPEC §8): one statement per interval extends every held claim.

A held row the heartbeat cannot extend and that nobody holds locked has lost its
claim (cancelled, SPEC §21, or reaped): its step is stopped (``lost``).

The statement skips rows another transaction holds locked, so it never waits. A row
this node runs that a client holds locked (a signal delivered inside a long open
transaction) would otherwise not be extended, and once its lease lapsed a reaper on
any node could take it when the client commits, while the first run still goes on.
For such a row the heartbeat queues a blocking extension behind the client's lock, on
a connection of its own (:meth:`Heartbeat._hold`): the extension lands the moment the
lock is released, before any reaper — reapers skip locked rows — can take the row.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg

from .._db import runner
from .._db.queries import Queries, Stmt
from .claims import Holdings
from .config import Config
from .executor import Claim
from .service import Service
from .stats import Stats

log = logging.getLogger("gen_durable")

MAX_HOLDS = 4
"""Lease extensions queued behind client locks at once (each holds a connection)."""


class Heartbeat(Service):
    name = "heartbeat"

    def __init__(
        self,
        config: Config,
        queries: Queries,
        holdings: Holdings,
        fetch: Callable[[Stmt], Awaitable[list[Any]]],
        stats: Stats,
        db_errors: tuple[type[BaseException], ...],
        lost: Callable[[int], None] = lambda instance_id: None,
    ) -> None:
        self._config = config
        self._queries = queries
        self._holdings = holdings
        self._fetch = fetch
        self._stats = stats
        self._db_errors = db_errors
        self._lost = lost
        self._holds: dict[int, asyncio.Task[None]] = {}

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._config.heartbeat_interval)
            await self.beat()

    async def stop(self) -> None:
        holds = list(self._holds.values())
        for task in holds:
            task.cancel()
        await asyncio.gather(*holds, return_exceptions=True)

    async def beat(self) -> None:
        """Extend every held lease; queue a blocking extension for held rows that were
        skipped because somebody else holds them locked."""
        held = self._holdings.held()
        if not held:
            return
        stmt = self._queries.heartbeat(
            [c.id for c in held], [c.token for c in held], self._config.lease_ttl
        )
        sent = time.monotonic()
        try:
            extended = {row.id for row in await self._fetch(stmt)}
            self._stats.add(statements=1, commits=1, heartbeats=1)
        except self._db_errors as exc:
            log.warning("heartbeat for %d rows failed: %s", len(held), exc)
            return
        # The database set each lease from its clock after `sent`: they last at least
        # this long, which is what a scheduler checks before it starts a buffered row.
        self._holdings.renewed(extended, sent + self._config.lease_ttl)
        if len(extended) == len(held):
            return
        # Still held now (not finished while the statement ran) yet not extended:
        # locked by another transaction.
        for claim in self._holdings.held():
            if claim.id in extended or claim.id in self._holds:
                continue
            if len(self._holds) >= MAX_HOLDS:
                break
            task = asyncio.create_task(self._hold(claim), name=f"gen_durable.hold.{claim.id}")
            self._holds[claim.id] = task

    async def _hold(self, claim: Claim) -> None:
        """Wait behind a client's row lock to extend one lease (own connection: it may
        wait long, and must not take one the node's loops need)."""
        stmt = self._queries.hold_lease(claim.id, claim.token, self._config.lease_ttl)
        try:
            conn = await psycopg.AsyncConnection.connect(self._config.dsn, autocommit=True)
            async with conn:
                extended = await runner.fetch(conn, stmt, raw=True)
            self._stats.add(statements=1, commits=1, heartbeats=1)
            if not extended and any(c.token == claim.token for c in self._holdings.held()):
                # Not locked, not extended, still held: the claim is gone — the row
                # was cancelled (SPEC §21; without LISTEN this is how the node learns)
                # or reaped. Whatever the step returns is stale: stop it.
                log.warning(
                    "instance %s: its claim was lost (cancelled or lease expired): "
                    "its step is stopped and whatever it returns is dropped",
                    claim.id,
                )
                self._lost(claim.id)
        except self._db_errors as exc:
            log.warning("lease extension of instance %s failed: %s", claim.id, exc)
        finally:
            self._holds.pop(claim.id, None)
