"""One node's runtime, composed: pools, executor, completer and the services (SPEC §8).

Every looping part of a node is a :class:`~gen_durable._runtime.service.Service` run by
one :class:`~gen_durable._runtime.service.Supervisor`: a scheduler per queue
(``scheduler.py``), the heartbeat (``heartbeat.py``), the reaper (``reaper.py``) and
the listener (``listener.py``). A service that raises is logged and restarted with
backoff; one that keeps failing stops the node cleanly — drained, its claims handed
back — instead of limping on (``failure`` then says why).

``start`` opens the pools and starts the services; ``stop`` drains the schedulers
(buffered rows released at once, running steps given ``drain_timeout``, then handed
back), flushes the completer, then stops the other services. ``stop`` is bounded — it
returns within ``drain_timeout`` plus a small margin whatever clients hold — and
idempotent: concurrent calls share one drain.

Connections: the node's own work (picks, heartbeat, reaper, releases) runs on a pool
of its own, and outcomes on another, never on the client pool: client calls blocked on
a row lock can exhaust theirs without delaying a heartbeat, which would let a healthy
step's lease lapse and the step run twice.

Claim tokens: every pick gets a fresh ``locked_by`` value ``<node id>:<pick sequence>``.
The outcome guard compares it (§18.2), so even this node re-claiming a row after the
reaper holds a different token than the stale step that still runs.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from .._db.queries import Queries, Stmt
from .._db.statements.control import CANCEL_PREFIX
from ..registry import Registry
from .claims import Holdings
from .completer import Completer
from .config import Config
from .executor import Claim, Executor
from .handback import UnknownMachines
from .heartbeat import Heartbeat
from .limits import UnknownLimits
from .listener import Listener
from .reaper import Reaper
from .retention import Retention
from .scheduler import QueueScheduler, QueueWiring
from .service import Supervisor
from .stats import Stats
from .threads import DaemonThreadPool
from .timers import Timers

log = logging.getLogger("gen_durable")

FLUSHERS = 2
"""Outcome flushes in flight at once; the second only for a large backlog (completer)."""
LOCK_TIMEOUT_MS = 200
RELEASE_TIMEOUT = 2.0
"""Bound on one release statement (a stop waits for it): past it the rows fall to the reaper."""
COMPLETER_GRACE = 1.0
"""How long a stop waits for outcomes still being committed after the drain."""
_DB_ERRORS = (psycopg.Error, OSError, PoolTimeout)


def with_options(dsn: str, extra: str) -> str:
    """The DSN's own ``options`` (a user's ``statement_timeout``, say) plus ``extra``:
    a connection keyword would otherwise replace them."""
    try:
        own = conninfo_to_dict(dsn).get("options")
    except psycopg.ProgrammingError:
        own = None
    return f"{own} {extra}" if own else extra


def _pool(dsn: str, name: str, size: int, **kwargs: str) -> AsyncConnectionPool[Any]:
    return AsyncConnectionPool(
        dsn,
        min_size=1,
        max_size=size,
        kwargs={"autocommit": True, "prepare_threshold": 0, **kwargs},
        open=False,
        name=name,
    )


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
        # One connection per queue's feeder, plus heartbeat, reaper, retention, timers and
        # a release.
        self.pool = _pool(config.dsn, f"gen_durable-{node_id}-runtime", len(config.queues) + 5)
        self.queries = queries
        self.registry = registry
        self.stats = stats
        self.node_id = node_id
        self._seq = itertools.count(1)
        total = sum(config.queues.values()) or 1
        self.threads = DaemonThreadPool(total)
        self.completer_pool, self.completer = _completer(config, queries, stats, node_id)
        self.executor = Executor(self.completer, self.threads, stats, config.run_ahead)
        self.holdings = Holdings()
        self.supervisor = Supervisor(self._fatal)
        wiring = QueueWiring(
            config=config,
            queries=queries,
            fetch=self.fetch,
            release=self.release,
            executor=self.executor,
            registry=registry,
            stats=stats,
            holdings=self.holdings,
            unknown=UnknownMachines(self.release, node_id, config.unknown_retry, lambda: registry),
            unknown_limits=UnknownLimits(),
            next_token=self.next_token,
            node_id=node_id,
        )
        self.schedulers = {q: QueueScheduler(wiring, q, n) for q, n in config.queues.items()}
        self.heartbeat = Heartbeat(
            config, queries, self.holdings, self.fetch, stats, _DB_ERRORS, self.abandon
        )
        self.reaper = Reaper(
            config, queries, self.fetch, stats, lambda: self.wake(None), _DB_ERRORS
        )
        self.timers = Timers(config, queries, self.fetch, stats, self.wake, _DB_ERRORS)
        self.failure: BaseException | None = None
        self.failed = asyncio.Event()
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
            self.supervisor.start(sched)
        self.supervisor.start(self.heartbeat)
        self.supervisor.start(self.reaper)
        if self.config.gc and self.config.retention is not None:
            sweep = Retention(self.config, self.fetch, self.stats, self.node_id, _DB_ERRORS)
            self.supervisor.start(sweep)
        self.supervisor.start(self.timers)
        if self.config.listen:
            self.supervisor.start(Listener(self.config, self.queries, self.wake))

    def wake(self, queue: str | None) -> None:
        """Nudge one queue's scheduler (None: every queue) to pick now; a cancel
        notification (SPEC §21) stops the step it names instead."""
        if queue is not None and queue.startswith(CANCEL_PREFIX):
            rest = queue[len(CANCEL_PREFIX) :]
            if rest.isdigit():
                self.abandon(int(rest))
            return
        if queue is None:
            for sched in self.schedulers.values():
                sched.wake.set()
        elif (one := self.schedulers.get(queue)) is not None:
            one.wake.set()

    def abandon(self, instance_id: int) -> None:
        """A row this node may hold was cancelled or lost its claim: stop its step."""
        for sched in self.schedulers.values():
            if sched.abandon(instance_id):
                return

    def _fatal(self, service: str, error: BaseException) -> None:
        """A service failed beyond restarting: stop the whole node cleanly."""
        if self.failure is None:
            self.failure = error
            self.failed.set()
        if self._stop_task is None:
            self._stop_task = asyncio.ensure_future(self._stop())

    async def stop(self) -> None:
        """Drain and stop; concurrent and repeated calls share the one drain."""
        if self._stop_task is None:
            self._stop_task = asyncio.ensure_future(self._stop())
        await asyncio.shield(self._stop_task)

    async def _stop(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.drain_timeout
        sup = self.supervisor

        def cancel(name: str) -> Callable[[], Awaitable[None]]:
            return lambda: sup.stop([name])

        await asyncio.gather(*(s.drain(deadline, cancel(s.name)) for s in self.schedulers.values()))
        for sched in self.schedulers.values():
            self.holdings.unregister(sched.name)
        await self.completer.drain(max(0.0, deadline - loop.time()) + COMPLETER_GRACE)
        await sup.stop()
        await self.completer_pool.close(timeout=1.0)
        await self.pool.close(timeout=1.0)
        self.threads.shutdown()

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


def _completer(
    config: Config, queries: Queries, stats: Stats, node_id: str
) -> tuple[AsyncConnectionPool[Any], Completer]:
    """The outcomes' pool and completer. Outcomes commit on connections of their own: a
    short lock_timeout there keeps one row locked by a client's open transaction from
    stalling every other outcome of the node, without limiting what clients may wait
    for."""
    pool = _pool(
        config.dsn,
        f"gen_durable-{node_id}-outcomes",
        FLUSHERS,
        options=with_options(config.dsn, f"-c lock_timeout={LOCK_TIMEOUT_MS}"),
    )
    return pool, Completer(pool, queries, stats, retry_for=config.lease_ttl / 2, flushers=FLUSHERS)
