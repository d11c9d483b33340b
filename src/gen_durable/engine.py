"""The engine: a node's workers plus the async client (SPEC §8, §11).

::

    engine = gd.Engine(dsn, queues={"default": 10, "checkout": 4}, fsms=[Checkout])
    async with engine:                      # opens the pool, starts the workers
        order = await engine.insert(Checkout, state={"order": 42})
        await engine.signal(order, "payment_confirmed", {"amount": 10})
        snapshot = await engine.get(order)
    # leaving the block drains: buffered rows released, running steps given drain_timeout

``queues={}`` makes a pure client (no workers). Several engines may live in one
process — each owns its pool, its registry view and its node id; nothing is global
except the class registry and telemetry handlers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool
from typing_extensions import Unpack

from ._control import Control
from ._db import bulk, runner
from ._db.bulk import inserted_ids
from ._db.queries import Queries, Stmt
from ._db.translate import DRIVER_ERRORS, server_of, unreachable
from ._dsn import resolve_dsn
from ._inputs import InsertOptions
from ._keys import Target, check_target
from ._limits import Limits
from ._runtime.config import RETENTION, Config, build_config
from ._runtime.cron import ScheduleService
from ._runtime.node import Node
from ._runtime.stats import Stats
from .client import (
    Delivery,
    build_insert,
    build_one,
    by_key,
    check_single,
    children_stmt,
    delivery,
    get_stmt,
    inbox_stmt,
    signal_params,
    wait_verdict,
)
from .errors import GenDurableError
from .instance import Instance
from .machine import Child, Machine, Signal
from .migrate import require_current
from .outcomes import Spec
from .registry import Registry
from .schedule import Schedule, check_schedules

log = logging.getLogger("gen_durable")

R = TypeVar("R")
S = TypeVar("S")

START_TIMEOUT = 30.0
"""How long ``start`` waits for the database before it gives up."""

_NOT_OPTIONS = frozenset({"self", "dsn", "queues", "fsms", "schedules", "__class__"})


class Engine(Control, Limits):
    """Runs machines from one PostgreSQL schema and inserts/signals/reads instances.

    ``queues`` maps queue name to concurrency (``{}``: a pure client that runs
    nothing); ``fsms`` lists machines to prefer over the process-wide registry. Every
    other keyword is an engine option declared in
    :class:`gen_durable._runtime.config.Config` — type, default, bounds and meaning —
    and listed in the README's configuration table. Durations are seconds. Bad values
    raise ``ConfigurationError`` here.

    Client calls raise only ``gd.GenDurableError`` subclasses (``DatabaseUnavailable``
    when PostgreSQL cannot be reached or the connection is lost, ``DatabaseError`` when
    it refuses a statement, each with the driver's error as ``__cause__``) or
    ``pydantic.ValidationError`` for bad state.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        queues: Mapping[str, int] | None = None,
        fsms: Iterable[type[Machine]] = (),
        schedules: Iterable[Schedule] = (),
        schema: str = "public",
        lease_ttl: float = 60.0,
        heartbeat_interval: float = 20.0,
        poll_interval: float = 1.0,
        max_poll_interval: float = 5.0,
        reap_interval: float = 30.0,
        prefetch: int | None = None,
        min_demand: int | None = None,
        drain_timeout: float = 5.0,
        listen: bool = True,
        pool_size: int | None = None,
        unknown_retry: float = 30.0,
        reap_batch: int = 1000,
        node_id: str | None = None,
        run_ahead: int = 16,
        crash_limit: int = 10,
        retention: float | Mapping[str, float] | None = RETENTION,
        gc_interval: float = 60.0,
        gc: bool = True,
    ) -> None:
        # Every keyword but dsn/queues/fsms is a Config option, validated there.
        options = {k: v for k, v in locals().items() if k not in _NOT_OPTIONS}
        self.config: Config = build_config(resolve_dsn(dsn), queues, **options)
        self.registry = Registry(fsms)
        self.schedules = check_schedules(schedules, self.config.queues)
        self.queries = Queries(self.config.schema)
        self.stats = Stats()
        self.node_id = self.config.node_id or (
            f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        )
        self._pool: AsyncConnectionPool[Any] | None = None
        self._node: Node | None = None
        self._stopping: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None

    # -- lifecycle -----------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._pool is not None

    @property
    def failure(self) -> BaseException | None:
        """Why this node stopped running steps on its own, if it did: a part of it (a
        queue's scheduler, the heartbeat, the reaper) kept failing, so the node drained
        and handed its claims back rather than limp on. Client calls still work, and
        the reason stays readable after ``stop()`` (until the next ``start()``)."""
        return self._failure if self._node is None else self._node.failure

    async def wait_failure(self) -> BaseException:
        """Wait until the node fails as :attr:`failure` describes (a worker process
        waits on this and exits). Never returns for a pure client."""
        node = self._node
        if node is None:
            await asyncio.Event().wait()  # nothing can fail
        assert node is not None
        await node.failed.wait()
        assert node.failure is not None
        return node.failure

    async def start(self) -> None:
        """Open the connection pool and start the workers (none for ``queues={}``).

        Raises ``gd.DatabaseUnavailable`` when PostgreSQL cannot be reached and
        ``gd.SchemaError`` when the schema is missing or older than this release.
        """
        if self._stopping is not None:
            await asyncio.shield(self._stopping)  # a stop in progress ends first
        if self._pool is not None:
            return
        self._failure = None
        # One connection of its own first: an unreachable server or a missing schema
        # fails the start at once, with the reason, instead of a pool retrying in the
        # background until its timeout.
        dsn = self.config.dsn
        async with await runner.connect(dsn, timeout=START_TIMEOUT) as conn:
            await require_current(conn, self.config.schema)
        size = self.config.pool_size or (len(self.config.queues) + 6)
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            dsn,
            min_size=min(2, size),
            max_size=size,
            kwargs={"autocommit": True, "prepare_threshold": 0},
            open=False,
            name=f"gen_durable-{self.node_id}",
        )
        try:
            await pool.open(wait=True, timeout=START_TIMEOUT)
        except BaseException as exc:
            await pool.close()
            if isinstance(exc, DRIVER_ERRORS):
                raise unreachable(exc, server_of(dsn)) from exc
            raise
        self._pool = pool
        if self.config.queues:
            node = Node(self.config, self.queries, self.registry, self.stats, self.node_id)
            try:
                await node.start()
                if self.schedules:
                    node.supervisor.start(ScheduleService(self.schedules, self.queries, node.fetch))
            except BaseException as exc:
                self._pool = None
                await pool.close()
                if isinstance(exc, DRIVER_ERRORS):
                    raise unreachable(exc, server_of(dsn)) from exc
                raise
            self._node = node

    async def stop(self) -> None:
        """Drain the workers (SPEC §8) and close the pool.

        Idempotent and safe to call concurrently (a signal handler and an ``async
        with`` exit, say): every caller waits for the one drain, and the pool closes
        only after it. Returns within ``drain_timeout`` plus a small margin whatever
        clients hold; rows it could not hand back fall to the reaper.
        """
        if self._stopping is None:
            if self._pool is None:
                return
            self._stopping = asyncio.ensure_future(self._stop())
        task = self._stopping
        try:
            await asyncio.shield(task)
        finally:
            if task.done() and self._stopping is task:
                self._stopping = None

    async def _stop(self) -> None:
        node, pool = self._node, self._pool
        try:
            if node is not None:
                await node.stop()
        finally:
            if node is not None:
                self._failure = node.failure  # still readable after the stop
            self._node = None
            self._pool = None
            if pool is not None:
                await pool.close(timeout=1.0)

    async def __aenter__(self) -> Engine:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- the client ------------------------------------------------------------------

    def _require_pool(self) -> AsyncConnectionPool[Any]:
        if self._pool is None:
            raise GenDurableError("the engine is not started: use `async with engine:` first")
        return self._pool

    async def _one(self, stmt: Stmt[R], conn: psycopg.AsyncConnection[Any] | None) -> R | None:
        return await runner.fetch_one(conn if conn is not None else self._require_pool(), stmt)

    async def _all(self, stmt: Stmt[R]) -> list[R]:
        return await runner.fetch(self._require_pool(), stmt)

    async def insert(
        self,
        machine: type[Machine[S]],
        *,
        conn: psycopg.AsyncConnection[Any] | None = None,
        **options: Unpack[InsertOptions[S]],
    ) -> int:
        """Insert one instance; returns its id (SPEC §11).

        Options: ``state``/``args``, ``step``, ``queue``, ``priority``,
        ``partition_key`` (with ``partition_limit``), ``rate_limit``, ``unique_key``,
        ``unique_scope``, ``eligible_at`` >
        ``schedule_at`` > ``schedule_in``. Raises ``gd.Duplicate`` when the unique key
        is occupied, ``pydantic.ValidationError`` for bad state (nothing inserted).
        Pass ``conn=`` to insert inside your own transaction.
        """
        rows = build_one(machine, dict(options))
        inserted = await self._one(self.queries.insert(rows), conn)
        return check_single(inserted_ids(inserted), rows)

    async def insert_all(
        self,
        specs: Iterable[object],
        *,
        conn: psycopg.AsyncConnection[Any] | None = None,
    ) -> list[int]:
        """Insert a batch (``gd.Spec`` items or bare classes) as one unit: all or none.

        Duplicates, against stored rows and within the batch, are dropped; returns the
        ids actually inserted (ascending). A large batch without unique keys is
        written by COPY (``_db/bulk.py``), anything else by one statement.
        """
        rows = build_insert(specs)
        if not len(rows):
            return []
        target = conn if conn is not None else self._require_pool()
        return await bulk.insert_all(target, self.queries, rows)

    async def signal(
        self,
        target: Target,
        name: str,
        payload: Any = None,
        *,
        dedup_key: str | None = None,
        start: Spec | None = None,
        conn: psycopg.AsyncConnection[Any] | None = None,
    ) -> bool:
        """Deliver a signal (SPEC §6, §20) to an id or to the occupant of a unique key
        (``str``/``bytes``): True when stored for a live instance (or already stored
        under its ``dedup_key``), False when the instance is already terminal — or, for
        a key, when nothing occupies it now but some row once did;
        ``gd.NoSuchInstance`` for an unknown id or a key no row ever carried.

        ``start=gd.Spec(Machine, unique_key=key, ...)`` is signal-with-start: when
        nothing occupies the key, that instance is inserted with the signal already in
        its inbox, atomically; concurrent calls for one key end in one instance holding
        every signal (``docs/signals.md``).
        """
        found = await self.deliver(
            target, name, payload, dedup_key=dedup_key, start=start, conn=conn
        )
        return found != "finished"

    async def deliver(
        self,
        target: Target,
        name: str,
        payload: Any = None,
        *,
        dedup_key: str | None = None,
        start: Spec | None = None,
        conn: psycopg.AsyncConnection[Any] | None = None,
    ) -> Delivery:
        """``signal`` saying what happened: ``"stored"``; ``"duplicate"`` (a signal with
        this ``dedup_key`` was already stored for the live instance, nothing new was
        stored); ``"finished"`` (refused: the instance is terminal, or no instance
        occupies the key any more)."""
        params = signal_params(target, name, payload, dedup_key)
        plan = by_key(self.queries, params, start)
        if plan is None:
            target_id, name, payload_text, dedup = params
            assert isinstance(target_id, int)
            delivered = await self._one(
                self.queries.signal(target_id, name, payload_text, dedup), conn
            )
            return delivery(delivered, target_id)
        stmt = plan.first()
        while True:
            found = await self._one(stmt, conn)
            started = plan.after_signal(found)
            if started is None:
                break
            inserted = await self._one(started, conn)
            again = plan.after_start(inserted)
            if again is None:
                break
            stmt = again
        return plan.result()

    async def get(
        self, target: Target, *, conn: psycopg.AsyncConnection[Any] | None = None
    ) -> Instance | None:
        """A frozen snapshot of one instance, or None. A key (``str``/``bytes``) names
        its occupant, else the most recently inserted row that carried it (SPEC §20)."""
        return await self._one(get_stmt(self.queries, target), conn)

    async def wait(
        self, target: Target, *, timeout: float | None = None, interval: float = 0.05
    ) -> Instance:
        """Poll until the instance (an id, or the row ``get(key)`` returns) is
        terminal (``done``/``failed``/``cancelled``) and return it.

        Raises ``gd.NoSuchInstance`` for an unknown id or key and ``TimeoutError`` when
        ``timeout`` seconds pass first. Polling, not a subscription: meant for
        scripts, tests and request handlers that wait briefly.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        name = check_target(target)
        while True:
            expired = deadline is not None and loop.time() >= deadline
            done = wait_verdict(await self.get(target), name, expired, timeout)
            if done is not None:
                return done
            await asyncio.sleep(interval)

    async def inbox(self, target: Target) -> list[Signal]:
        """The instance's stored signals, oldest first: ``ctx.signals`` items, with
        ``dedup_key`` and ``inserted_at`` filled in. An id or a key (the row ``get``
        returns)."""
        return await self._all(inbox_stmt(self.queries, target))

    async def children(self, target: Target) -> list[Child]:
        """The instance's children, by id (``ctx.childs`` items: ``id, fsm, status,
        state, result, last_error``). An id or a key (the row ``get`` returns)."""
        return await self._all(children_stmt(self.queries, target))
