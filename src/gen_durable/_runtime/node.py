"""One node's runtime: schedulers, executor, completer and the lease services (SPEC §8).

Services share one lifecycle. ``start`` opens them in dependency order; ``stop`` drains
the schedulers (buffered rows released at once, running steps given ``drain_timeout``),
flushes the completer, then stops the heartbeat, reaper and listener. Each background
loop catches and logs its own errors and backs off, so a lost database connection
never kills the node; if a loop dies anyway it is logged and restarted.

Claim tokens: every pick gets a fresh ``locked_by`` value ``<node id>:<pick sequence>``.
The outcome guard compares it (§18.2), so even this node re-claiming a row after the
reaper holds a different token than the stale step that still runs.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from .._db.queries import Queries, Stmt
from ..registry import Registry
from .completer import Completer
from .config import Config
from .executor import Claim, Executor
from .reaper import report_reaped
from .scheduler import QueueScheduler
from .stats import Stats

log = logging.getLogger("gen_durable")

FLUSHERS = 2
"""Outcome flushes in flight at once; the second only for a large backlog (completer)."""
LOCK_TIMEOUT_MS = 200


class Node:
    def __init__(
        self,
        config: Config,
        pool: AsyncConnectionPool[Any],
        queries: Queries,
        registry: Registry,
        stats: Stats,
        node_id: str,
    ) -> None:
        self.config = config
        self.pool = pool
        self.queries = queries
        self.registry = registry
        self.stats = stats
        self.node_id = node_id
        self._seq = itertools.count(1)
        total = sum(config.queues.values()) or 1
        self.threads = ThreadPoolExecutor(max_workers=total, thread_name_prefix="gen_durable-step")
        # Outcomes commit on connections of their own: a short lock_timeout there
        # keeps one row locked by a client's open transaction from stalling every
        # other outcome of the node, without limiting what clients may wait for.
        self.completer_pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            config.dsn,
            min_size=1,
            max_size=FLUSHERS,
            kwargs={
                "autocommit": True,
                "prepare_threshold": 0,
                "options": f"-c lock_timeout={LOCK_TIMEOUT_MS}",
            },
            open=False,
            name=f"gen_durable-{node_id}-outcomes",
        )
        self.completer = Completer(
            self.completer_pool,
            queries,
            stats,
            retry_for=config.lease_ttl / 2,
            flushers=FLUSHERS,
        )
        self.executor = Executor(self.completer, self.threads, stats, config.run_ahead)
        self.schedulers = {q: QueueScheduler(self, q, n) for q, n in config.queues.items()}
        self._services: dict[str, asyncio.Task[None]] = {}
        self._stopping = False

    def next_token(self) -> str:
        return f"{self.node_id}:{next(self._seq)}"

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        await self.completer_pool.open(wait=True, timeout=30)
        for sched in self.schedulers.values():
            sched.start()
        self._spawn("heartbeat", self._heartbeat_loop)
        self._spawn("reaper", self._reaper_loop)
        if self.config.listen:
            self._spawn("listener", self._listen_loop)

    def _spawn(self, name: str, factory: Callable[[], Coroutine[Any, Any, None]]) -> None:
        task = asyncio.create_task(factory(), name=f"gen_durable.{name}")
        self._services[name] = task

        def supervise(t: asyncio.Task[None]) -> None:
            if self._stopping or t.cancelled():
                return
            log.critical("gen_durable %s service died: %r; restarting it", name, t.exception())
            self._spawn(name, factory)

        task.add_done_callback(supervise)

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        await asyncio.gather(
            *(s.drain(self.config.drain_timeout) for s in self.schedulers.values())
        )
        await self.completer.drain()
        for task in self._services.values():
            task.cancel()
        await asyncio.gather(*self._services.values(), return_exceptions=True)
        await self.completer_pool.close()
        self.threads.shutdown(wait=False, cancel_futures=True)

    def held(self) -> list[Claim]:
        return [c for s in self.schedulers.values() for c in s.held()]

    async def fetch(self, stmt: Stmt) -> list[tuple[Any, ...]]:
        """Run one statement on a pooled autocommit connection; its rows, if any."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(stmt.query, stmt.params)
            rows: list[tuple[Any, ...]] = await cur.fetchall() if cur.description else []
            return rows

    async def release(
        self,
        claims: list[Claim],
        delay: float = 0.0,
        bump: bool = False,
        reason: str | None = None,
    ) -> int:
        """Hand claimed rows back to runnable (``bump``: count the attempt; ``reason``:
        recorded in ``last_error``). Rows a client holds locked are skipped: they keep
        their lease and fall to the reaper."""
        if not claims:
            return 0
        stmt = self.queries.release(
            [c.id for c in claims], [c.token for c in claims], delay, bump=bump, reason=reason
        )
        try:
            n = len(await self.fetch(stmt))
        except psycopg.Error as exc:
            log.warning("releasing %d rows failed (%s); their leases will expire", len(claims), exc)
            return 0
        self.stats.add(statements=1, commits=1, released=n)
        return n

    # -- lease services --------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        interval = self.config.heartbeat_interval
        while True:
            await asyncio.sleep(interval)
            held = self.held()
            if not held:
                continue
            stmt = self.queries.heartbeat(
                [c.id for c in held], [c.token for c in held], self.config.lease_ttl
            )
            try:
                await self.fetch(stmt)
                self.stats.add(statements=1, commits=1, heartbeats=1)
            except psycopg.Error as exc:
                log.warning("heartbeat for %d rows failed: %s", len(held), exc)

    async def _reaper_loop(self) -> None:
        interval = self.config.reap_interval
        limit = self.config.reap_batch
        while True:
            await asyncio.sleep(interval)
            try:
                while True:
                    stmt = self.queries.reap(limit, crash_limit=self.config.crash_limit)
                    rows = await self.fetch(stmt)
                    if report_reaped(rows, self.stats, self.config.crash_limit):
                        for sched in self.schedulers.values():
                            sched.wake.set()
                    if len(rows) < limit:
                        break
            except psycopg.Error as exc:
                log.warning("reaper pass failed: %s", exc)

    async def _listen_loop(self) -> None:
        """LISTEN for inserts and wake-ups: a latency accelerator, never the truth."""
        channel = self.queries.channel
        delay = 0.1
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self.config.dsn, autocommit=True)
                async with conn:
                    await conn.execute(self.queries.listen_sql())
                    delay = 0.1
                    # Anything inserted while we were not listening is found by polling;
                    # nudge every queue once so a reconnect costs no latency either.
                    for sched in self.schedulers.values():
                        sched.wake.set()
                    async for note in conn.notifies():
                        if note.channel != channel:
                            continue
                        target = self.schedulers.get(note.payload)
                        if target is not None:
                            target.wake.set()
            except asyncio.CancelledError:
                raise
            except (psycopg.Error, OSError) as exc:
                log.warning("listener connection lost (%s); reconnecting in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.config.max_poll_interval)
