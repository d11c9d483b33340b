"""The pytest plugin of ``gen_durable.testing`` (SPEC §24).

Enable it with ``pytest -p gen_durable.testing`` (or ``pytest_plugins =
["gen_durable.testing"]`` in a ``conftest.py``). It provides:

``gd_dsn`` (session)
    A PostgreSQL DSN: ``GEN_DURABLE_TEST_DSN`` if set, else an embedded server
    (``gen_durable[embedded]``) started once for the session and removed after it.
``gd_schema``
    A :class:`IsolatedSchema`: a freshly migrated schema of its own for one test,
    dropped afterwards, so tests neither see nor disturb each other's rows.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql

from ..engine import Engine
from ..migrate import migrate_sync

DSN_VARIABLE = "GEN_DURABLE_TEST_DSN"


@dataclass(frozen=True)
class IsolatedSchema:
    """One test's schema: where it lives, and engines bound to it."""

    dsn: str
    schema: str

    def engine(self, **options: Any) -> Engine:
        """An :class:`~gen_durable.Engine` on this schema; a pure client
        (``queues={}``) unless ``queues=`` says otherwise — the usual partner of
        ``drain``. Start it with ``async with``."""
        options.setdefault("queues", {})
        return Engine(self.dsn, schema=self.schema, **options)


@pytest.fixture(scope="session")
def gd_dsn() -> Iterator[str]:
    """The session's PostgreSQL: ``GEN_DURABLE_TEST_DSN``, else an embedded server."""
    env = os.environ.get(DSN_VARIABLE)
    if env:
        yield env
        return
    from .. import embedded

    # The server stops, and its directory goes, when the test process exits: removing
    # the directory at session teardown would pull it from under a running server.
    tmp = tempfile.mkdtemp(prefix="gen_durable-pytest-")
    yield embedded.start(os.path.join(tmp, "pgdata"), delete_on_exit=True)


@pytest.fixture
def gd_schema(gd_dsn: str) -> Iterator[IsolatedSchema]:
    """A migrated schema of this test's own, dropped when the test ends."""
    name = "gd_test_" + uuid.uuid4().hex[:12]
    migrate_sync(gd_dsn, schema=name)
    try:
        yield IsolatedSchema(gd_dsn, name)
    finally:
        with psycopg.connect(gd_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
