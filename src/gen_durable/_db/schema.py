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

# Control and retention (SPEC §21, §22).
# - `cancelled`, a third terminal status. ADD VALUE may run inside the migration's
#   transaction, but the new value cannot be *used* before that transaction commits,
#   so nothing below names it: the partial index says "terminal" as "none of the live
#   statuses", which covers `cancelled` once it exists.
# - `detached`: set by `retry` on a child whose parent's barrier has already been
#   released (§21, §27.3); such a child's end no longer touches its parent. A constant
#   default: catalog only, no rewrite.
# - `gen_durable_terminal` (status, updated_at) on terminal rows only: the retention
#   sweep walks one status's oldest rows, O(batch) however large the table (§22).
#   Plain CREATE INDEX (not CONCURRENTLY: that cannot run in a transaction) takes a
#   SHARE lock for the build; writers wait for it, nothing is rewritten.
CONTROL_UP = """
ALTER TYPE {s}.durable_status ADD VALUE IF NOT EXISTS 'cancelled';
ALTER TABLE {s}.gen_durable ADD COLUMN detached boolean NOT NULL DEFAULT false;
CREATE INDEX gen_durable_terminal ON {s}.gen_durable (status, updated_at)
    WHERE status NOT IN ('runnable', 'executing', 'awaiting_signal', 'awaiting_children');
"""

# PostgreSQL cannot drop an enum value. The previous version never writes it, so it
# stays in the type, unused: every cancelled row becomes `failed` (its reason kept in
# last_error), and migrating up again finds the value already there.
CONTROL_DOWN = """
UPDATE {s}.gen_durable SET status = 'failed', updated_at = now() WHERE status = 'cancelled';
DROP INDEX IF EXISTS {s}.gen_durable_terminal;
ALTER TABLE {s}.gen_durable DROP COLUMN IF EXISTS detached;
"""

# Keys as addresses (SPEC §20): every row that ever carried a key, newest last, so
# "no occupant — did one ever exist?" and `get(key)`'s most recent row are index
# lookups, not scans. Partial: rows without a key (most of them) are not in it, and
# the hot statements never write it (a row's key is set at insert and never changed).
# The build holds a SHARE lock (reads and running steps' reads go on, writes wait)
# for one pass over the table; on a large table an operator may build it beforehand
# with CREATE INDEX CONCURRENTLY under the same name, which IF NOT EXISTS keeps.
KEYS_UP = """
CREATE INDEX IF NOT EXISTS gen_durable_key ON {s}.gen_durable (unique_key, id)
    WHERE unique_key IS NOT NULL;
"""

KEYS_DOWN = """
DROP INDEX IF EXISTS {s}.gen_durable_key;
"""

# Await sets and deadlines (SPEC §19).
# - `awaits` becomes a set of names (text[]). Changing the column's type would rewrite
#   the whole table under an exclusive lock; instead a new array column is added, filled
#   from the old one only for the rows that carry a name (parked or just woken: the
#   rows in flight keep their wait), and renamed into place — ADD, DROP and RENAME
#   COLUMN only change the catalog.
# - `await_deadline`: when a wait with a timeout or deadline ends without a signal.
#   NULL for every existing row (no rewrite). A delivery that wakes the row clears it;
#   the timer leaves it, so a woken step reads `timed_out` from it.
# - `gen_durable_deadline` holds parked rows with a deadline only, in deadline order
#   per queue: the timer reads the due ones, never the parked population.
AWAIT_SETS_UP = """
ALTER TABLE {s}.gen_durable ADD COLUMN awaits_set text[], ADD COLUMN await_deadline timestamptz;
UPDATE {s}.gen_durable SET awaits_set = ARRAY[awaits] WHERE awaits IS NOT NULL;
ALTER TABLE {s}.gen_durable DROP COLUMN awaits;
ALTER TABLE {s}.gen_durable RENAME COLUMN awaits_set TO awaits;
CREATE INDEX gen_durable_deadline ON {s}.gen_durable (queue, await_deadline)
    WHERE status = 'awaiting_signal' AND await_deadline IS NOT NULL;
"""

# Back to one name: a set keeps its alphabetically first name and a deadline is
# dropped, so a row parked on several names wakes on that name only and a row that
# waited with a timeout waits for its signal alone.
AWAIT_SETS_DOWN = """
DROP INDEX IF EXISTS {s}.gen_durable_deadline;
ALTER TABLE {s}.gen_durable ADD COLUMN awaits_one text;
UPDATE {s}.gen_durable SET awaits_one = (SELECT min(n) FROM unnest(awaits) n)
    WHERE awaits IS NOT NULL;
ALTER TABLE {s}.gen_durable DROP COLUMN awaits, DROP COLUMN await_deadline;
ALTER TABLE {s}.gen_durable RENAME COLUMN awaits_one TO awaits;
"""

# Flow control (SPEC §23), one increment; every ADD COLUMN has a constant default (or
# none), so none rewrites the table and rows in flight keep running across it.
# - `partition_limit` (K) and `partition_slot`: an executing row of a key holds one of
#   the slots 0..K-1, and the unique index on executing (key, slot) is the cross-node
#   guard of §9 generalised from one to K. K = 1 rows always take slot 0, so for them
#   the index is the old one on the key alone; rows executing across the upgrade get
#   slot 0, exactly what they held. No lock table: the slot is freed the instant the
#   row leaves `executing`, including when its worker died (the reaper).
#   Recreating the index reads the table once under a SHARE lock (writes wait, reads
#   do not); it is dropped and built in one transaction so the guard never lapses.
# - `rate_limit`: the bucket a row's next step debits ("name" or "name:part").
# - `rate_limits`: the configuration every node enforces; `rate_buckets`: the tokens
#   of each (name, part), debited by the pick in the claim's own transaction.
# - `schedules`: the last slot each recurring schedule inserted, so a restart knows
#   a schedule seen before from a new one (which starts at its next slot).
FLOW_CONTROL_UP = """
ALTER TABLE {s}.gen_durable
    ADD COLUMN partition_limit smallint NOT NULL DEFAULT 1,
    ADD COLUMN partition_slot smallint NOT NULL DEFAULT 0,
    ADD COLUMN rate_limit text;
DROP INDEX {s}.gen_durable_partition_active;
CREATE UNIQUE INDEX gen_durable_partition_active ON {s}.gen_durable
    (partition_key, partition_slot)
    WHERE status = 'executing' AND partition_key IS NOT NULL;

-- Room for one more executing row of a key with K > 1: "fewer than K executing or
-- more urgent eligible runnable rows" as "no K-th one", reading at most K entries of
-- each index (the closed ranges: see the pick). Not inlined (it holds subqueries),
-- so the planner takes its declared COST instead of costing the probes per
-- candidate; only K > 1 rows call it.
CREATE FUNCTION {s}.gen_durable_partition_room(
    key text, k smallint, prio smallint, elig timestamptz, rid bigint
) RETURNS boolean LANGUAGE sql STABLE PARALLEL SAFE COST 5 AS $fn$
    SELECT NOT EXISTS (SELECT 1 FROM (
        (SELECT 1 FROM {s}.gen_durable e
         WHERE e.partition_key >= key AND e.partition_key <= key
           AND e.status = 'executing' LIMIT k)
        UNION ALL
        (SELECT 1 FROM {s}.gen_durable h
         WHERE h.partition_key >= key AND h.partition_key <= key
           AND h.status = 'runnable' AND h.eligible_at <= now()
           AND (h.priority, h.eligible_at, h.id) < (prio, elig, rid)
         LIMIT k)) n
      OFFSET k - 1)
$fn$;

CREATE TABLE {s}.rate_limits (
    name       text PRIMARY KEY,
    rate       float8 NOT NULL CHECK (rate > 0),
    per        float8 NOT NULL CHECK (per > 0),
    burst      float8 NOT NULL CHECK (burst >= 1),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE {s}.rate_buckets (
    name   text NOT NULL REFERENCES {s}.rate_limits (name) ON DELETE CASCADE,
    part   text NOT NULL DEFAULT '',
    tokens float8 NOT NULL,
    taken  int NOT NULL DEFAULT 0,
    stamp  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, part)
);
CREATE TABLE {s}.schedules (
    name       text PRIMARY KEY,
    cron       text NOT NULL,
    timezone   text NOT NULL,
    last_slot  timestamptz NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
"""

# Back to one executing row per key. Fails (and rolls back) while a key has several
# rows executing: let them finish, or stop the workers, first.
FLOW_CONTROL_DOWN = """
DROP TABLE IF EXISTS {s}.schedules;
DROP TABLE IF EXISTS {s}.rate_buckets;
DROP TABLE IF EXISTS {s}.rate_limits;
DROP FUNCTION IF EXISTS {s}.gen_durable_partition_room(
    text, smallint, smallint, timestamptz, bigint);
DROP INDEX IF EXISTS {s}.gen_durable_partition_active;
ALTER TABLE {s}.gen_durable
    DROP COLUMN IF EXISTS rate_limit,
    DROP COLUMN IF EXISTS partition_slot,
    DROP COLUMN IF EXISTS partition_limit;
CREATE UNIQUE INDEX gen_durable_partition_active ON {s}.gen_durable (partition_key)
    WHERE status = 'executing' AND partition_key IS NOT NULL;
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
    (CONTROL_UP, CONTROL_DOWN),
    (KEYS_UP, KEYS_DOWN),
    (AWAIT_SETS_UP, AWAIT_SETS_DOWN),
    (FLOW_CONTROL_UP, FLOW_CONTROL_DOWN),
    (TRACE_CONTEXT_UP, TRACE_CONTEXT_DOWN),
]
CONTROL_VERSION = VERSIONS.index((CONTROL_UP, CONTROL_DOWN)) + 1
"""The version that brings `cancelled` (its number depends on the increments before it)."""
AWAIT_SETS = VERSIONS.index((AWAIT_SETS_UP, AWAIT_SETS_DOWN)) + 1
"""The schema version that brings await sets and deadlines."""
FLOW_CONTROL = VERSIONS.index((FLOW_CONTROL_UP, FLOW_CONTROL_DOWN)) + 1
"""The schema version that brings flow control (SPEC §23)."""
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
