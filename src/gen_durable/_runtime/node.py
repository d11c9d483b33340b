"""One node's runtime: schedulers, executor, completer and the lease services (SPEC §8).

Services share one lifecycle. ``start`` opens them in dependency order; ``stop`` drains
the schedulers (buffered rows released at once, running steps given ``drain_timeout``,
then handed back), flushes the completer, then stops the heartbeat, reaper and
listener. ``stop`` is bounded — it returns within ``drain_timeout`` plus a small
margin whatever clients hold — and idempotent: concurrent calls share one drain. Each
background loop catches and logs its own errors and backs off, so a lost database
connection never kills the node; if a loop dies anyway it is logged and restarted.

Connections: the node's own work (picks, heartbeat, reaper, releases) runs on a pool
of its own, and outcomes on another, never on the client pool: client calls blocked on
a row lock can exhaust theirs without delaying a heartbeat, which would let a healthy
step's lease lapse and the step run twice.

A row this node runs but a client holds locked (a signal delivered inside a long open
transaction) is skipped by the heartbeat's ``SKIP LOCKED``; it gets a lease extension
queued behind the client's lock instead (``_hold``), so the extension lands the moment
the client commits — before any reaper can take the row.

Claim tokens: every pick gets a fresh ``locked_by`` value ``<node id>:<pick sequence>``.
The outcome guard compares it (§18.2), so even this node re-claiming a row after the
reaper holds a different token than the stale step that still runs.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from .._db.queries import Queries, Stmt
from ..registry import Registry
from .completer import Completer
from .config import Config
from .executor import Claim, Executor
from .reaper import report_reaped
from .scheduler import NOT_FOUND_LOG_EVERY, EveryInterval, QueueScheduler
from .stats import Stats
from .threads import DaemonThreadPool

log = logging.getLogger("gen_durable")

FLUSHERS = 2
"""Outcome flushes in flight at once; the second only for a large backlog (completer)."""
LOCK_TIMEOUT_MS = 200
RELEASE_TIMEOUT = 2.0
"""Bound on one release statement (a stop waits for it): past it the rows fall to the reaper."""
COMPLETER_GRACE = 1.0
"""How long a stop waits for outcomes still being committed after the drain."""
MAX_HOLDS = 4
"""Lease extensions queued behind client locks at once (each holds a connection)."""
_DB_ERRORS = (psycopg.Error, OSError, PoolTimeout)


def with_options(dsn: str, extra: str) -> str:
    """The DSN's own ``options`` (a user's ``statement_timeout``, say) plus ``extra``:
    a connection keyword would otherwise replace them."""
    try:
        own = conninfo_to_dict(dsn).get("options")
    except psycopg.ProgrammingError:
        own = None
    return f"{own} {extra}" if own else extra


class Node:
    def __init__(
        self,
        config: Config,
        queries: Queries,
        registry: Registry,
        stats: Stats,
        node_id: str,
    ) -> None:
        self.config = config
        # One connection per queue's feeder, plus heartbeat, reaper and a release.
        self.pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            config.dsn,
            min_size=1,
            max_size=len(config.queues) + 3,
            kwargs={"autocommit": True, "prepare_threshold": 0},
            open=False,
            name=f"gen_durable-{node_id}-runtime",
        )
        self.queries = queries
        self.registry = registry
        self.stats = stats
        self.node_id = node_id
        self._seq = itertools.count(1)
        self.not_found_log = EveryInterval(NOT_FOUND_LOG_EVERY)  # shared by every queue
        total = sum(config.queues.values()) or 1
        self.threads = DaemonThreadPool(total)
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
                "options": with_options(config.dsn, f"-c lock_timeout={LOCK_TIMEOUT_MS}"),
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
        self._holds: dict[int, asyncio.Task[None]] = {}
        self._stopping = False
        self._stop_task: asyncio.Task[None] | None = None

    def next_token(self) -> str:
        return f"{self.node_id}:{next(self._seq)}"

    # -- lifecycle -----------------------------------------------------------------

    async def start(self) -> None:
        try:
            await self.pool.open(wait=True, timeout=30)
            await self.completer_pool.open(wait=True, timeout=30)
        except BaseException:
            await self.pool.close()
            await self.completer_pool.close()
            raise
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
        """Drain and stop; concurrent and repeated calls share the one drain."""
        if self._stop_task is None:
            self._stop_task = asyncio.ensure_future(self._stop())
        await asyncio.shield(self._stop_task)

    async def _stop(self) -> None:
        self._stopping = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.drain_timeout
        await asyncio.gather(*(s.drain(deadline) for s in self.schedulers.values()))
        await self.completer.drain(max(0.0, deadline - loop.time()) + COMPLETER_GRACE)
        tasks = [*self._services.values(), *self._holds.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.completer_pool.close(timeout=1.0)
        await self.pool.close(timeout=1.0)
        self.threads.shutdown()

    def held(self) -> list[Claim]:
        return [c for s in self.schedulers.values() for c in s.held()]

    async def fetch(self, stmt: Stmt) -> list[Any]:
        """Run one statement on a pooled autocommit connection; its rows, decoded by
        name. Errors stay psycopg's own: the loops classify them."""
        from .._db import runner

        return await runner.fetch(self.pool, stmt, raw=True)

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
            n = len(await asyncio.wait_for(self.fetch(stmt), RELEASE_TIMEOUT))
        except (*_DB_ERRORS, TimeoutError) as exc:
            log.warning("releasing %d rows failed (%s); their leases will expire", len(claims), exc)
            return 0
        self.stats.add(statements=1, commits=1, released=n)
        return n

    # -- lease services --------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        interval = self.config.heartbeat_interval
        while True:
            await asyncio.sleep(interval)
            await self.beat()

    async def beat(self) -> None:
        """Extend every held lease; queue a blocking extension for rows skipped because
        somebody else holds them locked (§8, and issue C of the hardening work)."""
        held = self.held()
        if not held:
            return
        stmt = self.queries.heartbeat(
            [c.id for c in held], [c.token for c in held], self.config.lease_ttl
        )
        try:
            extended = {row.id for row in await self.fetch(stmt)}
            self.stats.add(statements=1, commits=1, heartbeats=1)
        except _DB_ERRORS as exc:
            log.warning("heartbeat for %d rows failed: %s", len(held), exc)
            return
        if len(extended) == len(held):
            return
        # Still held now (not finished while the statement ran) yet not extended:
        # locked by another transaction.
        for claim in self.held():
            if claim.id in extended or claim.id in self._holds or self._stopping:
                continue
            if len(self._holds) >= MAX_HOLDS:
                break
            task = asyncio.create_task(self._hold(claim), name=f"gen_durable.hold.{claim.id}")
            self._holds[claim.id] = task

    async def _hold(self, claim: Claim) -> None:
        """Wait behind a client's row lock to extend one lease (own connection: it may
        wait long, and must not take one the node's loops need)."""
        stmt = self.queries.hold_lease(claim.id, claim.token, self.config.lease_ttl)
        try:
            conn = await psycopg.AsyncConnection.connect(self.config.dsn, autocommit=True)
            async with conn:
                await conn.execute(stmt.query, stmt.params)
            self.stats.add(statements=1, commits=1, heartbeats=1)
        except _DB_ERRORS as exc:
            log.warning("lease extension of instance %s failed: %s", claim.id, exc)
        finally:
            self._holds.pop(claim.id, None)

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
