"""Test harness: real PostgreSQL, one fresh schema per test.

The DSN comes from ``GEN_DURABLE_TEST_DSN``; without it the harness starts an
embedded PostgreSQL server of its own for the session (so ``make test`` needs no
installed server). Every test that touches the database gets its own freshly migrated
schema (``schema`` fixture), dropped afterwards: tests are isolated and order-free,
and every run exercises the non-``public`` schema path end to end.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import psycopg
import pytest

import gen_durable as gd
from gen_durable._db.queries import Queries


@pytest.fixture(scope="session")
def dsn() -> Iterator[str]:
    env = os.environ.get("GEN_DURABLE_TEST_DSN")
    if env:
        yield env
        return
    tmp = tempfile.mkdtemp(prefix="gen_durable-test-")
    yield gd.embedded.start(os.path.join(tmp, "pgdata"), delete_on_exit=True)


@pytest.fixture
def schema(dsn: str) -> Iterator[str]:
    name = "t_" + uuid.uuid4().hex[:12]
    gd.migrate_sync(dsn, schema=name)
    yield name
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


@pytest.fixture
def q(schema: str) -> Queries:
    """The statements bound to the test's schema."""
    from gen_durable._db.queries import Queries

    return Queries(schema)


@pytest.fixture
async def conn(dsn: str, schema: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    """An autocommit connection for assertions on the test's schema."""
    c = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    try:
        yield c
    finally:
        await c.close()


FAST = dict(
    lease_ttl=10,
    heartbeat_interval=1,
    poll_interval=0.05,
    max_poll_interval=0.2,
    reap_interval=0.5,
    drain_timeout=2,
)


@pytest.fixture
async def make_engine(dsn: str, schema: str) -> AsyncIterator[Callable[..., gd.Engine]]:
    """Build engines on the test's schema with fast timings; all stopped at teardown."""
    engines: list[gd.Engine] = []

    def factory(**options: Any) -> gd.Engine:
        opts: dict[str, Any] = {**FAST, "schema": schema, **options}
        engine = gd.Engine(dsn, **opts)
        engines.append(engine)
        return engine

    yield factory
    for engine in engines:
        await engine.stop()


async def wait_for(
    condition: Callable[[], Awaitable[Any]], timeout: float = 10.0, interval: float = 0.02
) -> Any:
    """Poll an async condition until it returns a truthy value, or fail at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await condition()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value {value!r})")
        await asyncio.sleep(interval)
