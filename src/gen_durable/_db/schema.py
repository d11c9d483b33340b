"""The DDL of each schema version (SPEC §2, §16).

Each version is an (up, down) pair of SQL scripts with a ``{s}`` placeholder for the
quoted schema name. The installed version is recorded in ``COMMENT ON TABLE
gen_durable`` as ``gen_durable schema version N``; that marker is also how a foreign
table that merely shares our name is told apart from ours.
"""

from __future__ import annotations

import re

MARKER = "gen_durable schema version"
MARKER_RE = re.compile(r"^gen_durable schema version (\d+)$")

# Version 1: the whole SPEC §2 data model.
#
# Choices worth knowing:
# - `unique_scope` is an array of the enum (not text[]): the generated column must be
#   IMMUTABLE and enum→text casts are only STABLE.
# - `gen_durable_partition_active` is UNIQUE: at most one executing row per
#   partition_key, enforced by the database itself. It is the cross-node guard of
#   SPEC §9 that needs no pinned connection and releases the instant the row leaves
#   `executing` (outcome, reaper, or release), including when its worker died.
# - fillfactor 80 leaves room on each page for HOT updates: the hot columns
#   (status, step, lease) are rewritten on every step and only the partial indexes
#   whose predicate changes have to be touched.
V1_UP = """
CREATE TYPE {s}.durable_status AS ENUM (
    'runnable', 'executing', 'awaiting_signal', 'awaiting_children', 'done', 'failed'
);

CREATE TABLE {s}.gen_durable (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    fsm              text NOT NULL,
    fsm_version      int NOT NULL DEFAULT 1,
    step             text NOT NULL,
    status           {s}.durable_status NOT NULL DEFAULT 'runnable',
    state            jsonb NOT NULL DEFAULT '{}',
    result           jsonb,
    awaits           text,
    queue            text NOT NULL DEFAULT 'default',
    priority         smallint NOT NULL DEFAULT 0,
    partition_key    text,
    eligible_at      timestamptz NOT NULL DEFAULT now(),
    attempt          int NOT NULL DEFAULT 0,
    last_error       text,
    locked_by        text,
    lease_expires_at timestamptz,
    parent_id        bigint REFERENCES {s}.gen_durable (id) ON DELETE SET NULL,
    children_pending int NOT NULL DEFAULT 0,
    unique_key       bytea,
    unique_scope     {s}.durable_status[] NOT NULL DEFAULT '{}',
    unique_guard     bytea GENERATED ALWAYS AS (
                         CASE WHEN status = ANY (unique_scope) THEN unique_key END
                     ) STORED,
    inserted_at      timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT gen_durable_attempt_nonneg CHECK (attempt >= 0),
    CONSTRAINT gen_durable_children_nonneg CHECK (children_pending >= 0),
    CONSTRAINT gen_durable_lease_iff_executing CHECK (
        (status = 'executing') = (locked_by IS NOT NULL AND lease_expires_at IS NOT NULL)
    )
) WITH (fillfactor = 80);

CREATE INDEX gen_durable_pick ON {s}.gen_durable (queue, priority, eligible_at)
    WHERE status = 'runnable';
CREATE INDEX gen_durable_lease ON {s}.gen_durable (lease_expires_at)
    WHERE status = 'executing';
CREATE UNIQUE INDEX gen_durable_unique ON {s}.gen_durable (unique_guard)
    WHERE unique_guard IS NOT NULL;
CREATE INDEX gen_durable_parent ON {s}.gen_durable (parent_id)
    WHERE parent_id IS NOT NULL;
CREATE UNIQUE INDEX gen_durable_partition_active ON {s}.gen_durable (partition_key)
    WHERE status = 'executing' AND partition_key IS NOT NULL;

CREATE TABLE {s}.signals (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    target_id   bigint NOT NULL REFERENCES {s}.gen_durable (id) ON DELETE CASCADE,
    name        text NOT NULL,
    payload     jsonb NOT NULL DEFAULT '{}',
    dedup_key   text,
    inserted_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT signals_dedup UNIQUE (target_id, dedup_key)
);
CREATE INDEX signals_target ON {s}.signals (target_id, name);
"""

V1_DOWN = """
DROP TABLE IF EXISTS {s}.signals;
DROP TABLE IF EXISTS {s}.gen_durable;
DROP TYPE IF EXISTS {s}.durable_status;
"""

# Version 2: the runnable rows of each partition key in (priority, eligible_at, id)
# order. The pick probes it so that a key's later row never runs while an earlier,
# eligible one is merely locked by somebody else's transaction (a client delivering a
# signal inside its own open transaction): SKIP LOCKED alone would skip the head of
# the key and run the next one out of order (SPEC §9).
V2_UP = """
CREATE INDEX gen_durable_partition_queue ON {s}.gen_durable
    (partition_key, priority, eligible_at, id)
    WHERE status = 'runnable' AND partition_key IS NOT NULL;
"""

V2_DOWN = """
DROP INDEX IF EXISTS {s}.gen_durable_partition_queue;
"""

# Version 3: what the reaper and the error history need (SPEC §5).
# - `crash_count`: lease expiries of the current step since its last committed outcome;
#   the reaper fails the row once it reaches the engine's `crash_limit`.
# - `errors`: the instance's last few errors (a JSON array of objects, oldest first).
# Both have constant defaults, so ADD COLUMN only records them in the catalog: no table
# rewrite, and rows in flight keep running across the upgrade. No CHECK constraint on
# `crash_count` for the same reason: adding one would scan the whole table under the
# migration's exclusive lock.
V3_UP = """
ALTER TABLE {s}.gen_durable
    ADD COLUMN crash_count int NOT NULL DEFAULT 0,
    ADD COLUMN errors jsonb NOT NULL DEFAULT '[]';
"""

V3_DOWN = """
ALTER TABLE {s}.gen_durable DROP COLUMN IF EXISTS errors, DROP COLUMN IF EXISTS crash_count;
"""

# Version 4: any unique scope (SPEC §10, revised in v2). `unique_guard` becomes a plain
# column that keeps its current values: the insert sets it (the key, when the row's
# scope holds `runnable`) and every status change that leaves the scope clears it for
# good, so a row returning into its scope can never collide with a newer holder of its
# key. DROP EXPRESSION (PostgreSQL 13+) only changes the catalog: no rewrite, the
# partial unique index `gen_durable_unique` stays as it is, rows in flight keep
# running.
V4_UP = """
ALTER TABLE {s}.gen_durable ALTER COLUMN unique_guard DROP EXPRESSION;
"""

# Back to the generated column, and with it the v1 semantics: the guard is recomputed
# from the status on every change. PostgreSQL cannot turn a plain column back into a
# generated one, so it is dropped (with its index) and added again, computed for every
# row. If two rows with one key are both inside their scopes again (a row that left
# its scope and came back while a newer row took the key), recreating the index fails
# and the whole down migration rolls back: finish or delete one of them first.
V4_DOWN = """
ALTER TABLE {s}.gen_durable DROP COLUMN unique_guard;
ALTER TABLE {s}.gen_durable ADD COLUMN unique_guard bytea GENERATED ALWAYS AS (
    CASE WHEN status = ANY (unique_scope) THEN unique_key END
) STORED;
CREATE UNIQUE INDEX gen_durable_unique ON {s}.gen_durable (unique_guard)
    WHERE unique_guard IS NOT NULL;
"""

# Trace context (SPEC §25): the W3C `traceparent`/`tracestate` of the trace that
# inserted the instance or sent the signal that woke it, so each step's span is
# parented there. A nullable column without a default only changes the catalog: no
# rewrite, rows in flight keep running and simply have no trace to follow.
TRACE_CONTEXT_UP = """
ALTER TABLE {s}.gen_durable ADD COLUMN trace_context text;
"""

TRACE_CONTEXT_DOWN = """
ALTER TABLE {s}.gen_durable DROP COLUMN IF EXISTS trace_context;
"""

VERSIONS: list[tuple[str, str]] = [
    (V1_UP, V1_DOWN),
    (V2_UP, V2_DOWN),
    (V3_UP, V3_DOWN),
    (V4_UP, V4_DOWN),
    (TRACE_CONTEXT_UP, TRACE_CONTEXT_DOWN),
]
LATEST = len(VERSIONS)


def comment_for(version: int) -> str:
    return f"{MARKER} {version}"


def parse_comment(comment: str | None) -> int | None:
    """The version recorded in the table comment, or None when it is not ours."""
    if comment is None:
        return None
    m = MARKER_RE.match(comment.strip())
    return int(m.group(1)) if m else None


def render(script: str, schema: str) -> str:
    """Fill the schema placeholder with the quoted identifier."""
    return script.replace("{s}", quote_ident(schema))


def script(version: int, schema: str, *, down: bool = False) -> str:
    """The SQL that moves ``schema`` from ``version - 1`` to ``version`` (or back),
    ending with the ``COMMENT ON TABLE`` that records the version it arrives at."""
    up, dn = VERSIONS[version - 1]
    q = quote_ident(schema)
    if down:
        text = render(dn, schema)
        if version > 1:
            text += f"\nCOMMENT ON TABLE {q}.gen_durable IS '{comment_for(version - 1)}';\n"
        return text
    text = f"CREATE SCHEMA IF NOT EXISTS {q};\n" if version == 1 else ""
    text += render(up, schema)
    return text + f"\nCOMMENT ON TABLE {q}.gen_durable IS '{comment_for(version)}';\n"


def quote_ident(name: str) -> str:
    if not name or "\x00" in name:
        raise ValueError(f"invalid schema name {name!r}")
    return '"' + name.replace('"', '""') + '"'
