"""Schema migrations (SPEC §16).

``await gd.migrate(dsn_or_conn)`` brings a schema to the latest version,
``gd.migrate(..., version=N)`` to version N, and ``gd.migrate_down(..., version=0)``
back down. The installed version lives in ``COMMENT ON TABLE gen_durable`` and is read
back, so only the missing increments run and migrating twice is a no-op. Every
migration runs in one transaction under a transaction-level advisory lock keyed by the
schema name, so concurrent migrators queue up instead of racing. A table named
``gen_durable`` that carries no gen_durable marker is somebody else's: migration stops
with :class:`~gen_durable.errors.SchemaError` and touches nothing.

For Alembic or Django migrations, :func:`migration_sql` returns the SQL of one
version step as text::

    op.execute(gd.migration_sql(1, schema="public"))
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from ._db import runner
from ._db import schema as ddl
from ._db.statement import Stmt
from ._db.statements.migrations import LOCK, VERSION, TableComment, lock_key
from ._dsn import resolve_dsn
from .errors import SchemaError

LATEST_VERSION = ddl.LATEST

ConnOrDsn = str | psycopg.AsyncConnection[Any] | psycopg.Connection[Any] | None


def migration_sql(version: int, *, schema: str = "public", down: bool = False) -> str:
    """The SQL that moves the schema from ``version - 1`` to ``version`` (or back).

    The text includes the ``COMMENT ON TABLE`` that records the version, so running
    it by hand (or from another migration tool) leaves a schema ``migrate`` recognises.
    """
    if not 1 <= version <= LATEST_VERSION:
        raise SchemaError(f"unknown schema version {version}; versions are 1..{LATEST_VERSION}")
    return ddl.script(version, schema, down=down)


async def installed_version(conn: psycopg.AsyncConnection[Any], schema: str = "public") -> int:
    """The schema version installed in ``schema`` (0 when there is none)."""
    row = await runner.fetch_one(conn, VERSION.bind(schema, {"schema": schema}))
    return _parse_version(row, schema)


def installed_version_sync(conn: psycopg.Connection[Any], schema: str = "public") -> int:
    row = runner.fetch_one_sync(conn, VERSION.bind(schema, {"schema": schema}))
    return _parse_version(row, schema)


def _parse_version(row: TableComment | None, schema: str) -> int:
    if row is None:
        return 0
    version = ddl.parse_comment(row.comment)
    if version is None:
        raise SchemaError(
            f"{schema}.gen_durable exists but was not created by gen_durable "
            "(its table comment carries no gen_durable version); nothing was changed. "
            "Use another schema (schema=...) or rename that table."
        )
    if version > LATEST_VERSION:
        raise SchemaError(
            f"{schema}.gen_durable is at schema version {version}, newer than this "
            f"gen_durable knows ({LATEST_VERSION}); upgrade the library"
        )
    return version


def _plan(current: int, target: int) -> list[tuple[int, bool]]:
    if target >= current:
        return [(v, False) for v in range(current + 1, target + 1)]
    return [(v, True) for v in range(current, target, -1)]


async def _run(conn_or_dsn: ConnOrDsn, schema: str, target: int | None, down: bool) -> int:
    if isinstance(conn_or_dsn, psycopg.Connection):
        return _run_sync(conn_or_dsn, schema, target, down)
    if conn_or_dsn is None or isinstance(conn_or_dsn, str):
        dsn = resolve_dsn(conn_or_dsn)
        async with await runner.connect(dsn) as conn:
            return await _run_async(conn, schema, target, down)
    return await _run_async(conn_or_dsn, schema, target, down)


def _check_target(target: int | None, down: bool) -> int:
    if target is None:
        return 0 if down else LATEST_VERSION
    if isinstance(target, bool) or not isinstance(target, int):
        raise SchemaError(f"version must be an int, not {target!r}")
    if not 0 <= target <= LATEST_VERSION:
        raise SchemaError(f"unknown schema version {target}; versions are 0..{LATEST_VERSION}")
    return target


def _direction_error(current: int, target: int, down: bool) -> SchemaError | None:
    if down and target > current:
        return SchemaError(
            f"cannot migrate down to version {target}: version {current} is installed; "
            "use migrate() to go up"
        )
    if not down and target < current:
        return SchemaError(
            f"version {current} is installed, above {target}; use migrate_down() to go down"
        )
    return None


# Another object already holds one of our names (a `signals` table, a
# `durable_status` type…) while no gen_durable table marks the schema as ours: the
# same "not ours" case as a foreign gen_durable table. The transaction rolls back,
# so nothing was changed; say so in our own error instead of a bare driver error.
_CLASH = (pg_errors.DuplicateTable, pg_errors.DuplicateObject)


def _clash(exc: psycopg.Error, schema: str) -> SchemaError:
    what = exc.diag.message_primary or str(exc)
    return SchemaError(
        f"schema {schema!r} already has an object gen_durable needs to create ({what}); "
        "nothing was changed. Use another schema (schema=...) or rename that object."
    )


# One migration, written once: a generator that yields what to run — a statement,
# answered with its rows, or a DDL script, answered with None — and at last the
# version it leaves. The async and the sync path only drive it inside one transaction
# (psycopg's own way to one core under two I/O layers); a driver error is thrown into
# it, so a name clash is told apart here once.
_Migration = Generator[Stmt | str | int, list[Any] | None, None]


def _migration(schema: str, target: int | None, down: bool) -> _Migration:
    goal = _check_target(target, down)
    yield LOCK.bind(schema, {"key": lock_key(schema)})
    rows = yield VERSION.bind(schema, {"schema": schema})
    current = _parse_version(rows[0] if rows else None, schema)
    err = _direction_error(current, goal, down)
    if err:
        raise err
    for version, is_down in _plan(current, goal):
        try:
            yield migration_sql(version, schema=schema, down=is_down)
        except _CLASH as exc:
            raise _clash(exc, schema) from exc
    yield goal


async def _run_async(
    conn: psycopg.AsyncConnection[Any], schema: str, target: int | None, down: bool
) -> int:
    steps = _migration(schema, target, down)
    with runner.Boundary("migrate", conn):
        async with conn.transaction():
            todo = next(steps)
            while not isinstance(todo, int):
                try:
                    answer = None
                    if isinstance(todo, str):
                        await runner.run_script(conn, todo)
                    else:
                        answer = await runner.fetch(conn, todo, raw=True)
                except psycopg.Error as exc:
                    todo = steps.throw(exc)
                else:
                    todo = steps.send(answer)
            return todo


def _run_sync(conn: psycopg.Connection[Any], schema: str, target: int | None, down: bool) -> int:
    steps = _migration(schema, target, down)
    with runner.Boundary("migrate", conn), conn.transaction():
        todo = next(steps)
        while not isinstance(todo, int):
            try:
                answer = None
                if isinstance(todo, str):
                    runner.run_script_sync(conn, todo)
                else:
                    answer = runner.fetch_sync(conn, todo, raw=True)
            except psycopg.Error as exc:
                todo = steps.throw(exc)
            else:
                todo = steps.send(answer)
        return todo


async def migrate(
    dsn_or_connection: ConnOrDsn = None, schema: str = "public", version: int | None = None
) -> int:
    """Bring ``schema`` up to ``version`` (default: the latest). Returns the version.

    Accepts a DSN, an async connection or a sync connection (a sync connection is
    migrated synchronously, inside this coroutine).
    """
    return await _run(dsn_or_connection, schema, version, down=False)


async def migrate_down(
    dsn_or_connection: ConnOrDsn = None, schema: str = "public", version: int = 0
) -> int:
    """Take ``schema`` down to ``version`` (default 0: drop everything gen_durable owns)."""
    return await _run(dsn_or_connection, schema, version, down=True)


def migrate_sync(
    dsn_or_connection: str | psycopg.Connection[Any] | None = None,
    schema: str = "public",
    version: int | None = None,
    *,
    down: bool = False,
) -> int:
    """Synchronous :func:`migrate` / :func:`migrate_down` for scripts and Django.

    Without a DSN, ``GEN_DURABLE_DSN`` then ``DATABASE_URL`` are used, as by ``Engine``.
    """
    if dsn_or_connection is None or isinstance(dsn_or_connection, str):
        with runner.connect_sync(resolve_dsn(dsn_or_connection)) as conn:
            return _run_sync(conn, schema, version, down)
    return _run_sync(dsn_or_connection, schema, version, down)


async def require_current(conn: psycopg.AsyncConnection[Any], schema: str) -> None:
    """Refuse to run an engine on a schema that is missing or older than this release."""
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
