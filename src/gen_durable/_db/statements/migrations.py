"""What migrations ask the database (SPEC §16); the DDL itself is in :mod:`.._db.schema`."""

from __future__ import annotations

from dataclasses import dataclass

from ..statement import Statement


@dataclass(frozen=True, slots=True)
class TableComment:
    """The comment on ``gen_durable`` — where the installed version is recorded."""

    comment: str | None


# By catalog, not by a query of the table: a table named gen_durable that is not ours
# (any relation kind) must be recognised and left alone, not read.
VERSION = Statement(
    "migrate.version",
    "The comment on a schema's gen_durable table: the installed schema version",
    """
SELECT obj_description(c.oid, 'pg_class') AS comment
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %(schema)s AND c.relname = 'gen_durable'
  AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
""",
    {"schema": "text"},
    TableComment,
)

# Transaction-level, keyed by the schema name: concurrent migrators of one schema
# queue up instead of racing, and the lock goes with the migration's commit.
LOCK: Statement[None] = Statement(
    "migrate.lock",
    "Serialise migrators of one schema for the length of the migration's transaction",
    "SELECT pg_advisory_xact_lock(hashtext(%(key)s))",
    {"key": "text"},
)


def lock_key(schema: str) -> str:
    return "gen_durable.migrate:" + schema
