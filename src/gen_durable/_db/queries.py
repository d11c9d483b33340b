"""Every SQL statement the engine runs, one method per statement (SPEC §4–§10, §17, §18).

A :class:`Queries` object is built once per schema: it renders each statement with the
schema-qualified names (so nothing depends on the server's ``search_path``) and keeps
it as bytes, which psycopg prepares on first use. A method returns a :class:`Stmt`
(query + parameters); the caller runs it on an async or a sync connection, so the
sync client shares every statement with the async core.

Shapes that matter, once:

* Batches travel as ONE jsonb parameter, a JSON array of row arrays unpacked with
  ``jsonb_array_elements`` — one statement for any number of rows and no
  65,535-parameter ceiling (§18.6). Building that text in Python is ~25x cheaper
  than adapting a dozen parallel Python lists to PostgreSQL arrays, which was the
  engine's largest per-step CPU cost; values that are already JSON (state, result)
  are spliced in verbatim, never encoded twice (§18.3).
* Every write to a claimed row is a compare-and-set on the *claim token*
  (``locked_by``, which carries a per-pick sequence number, so a node re-claiming the
  same row after the reaper still holds a different token) plus
  ``status = 'executing'`` (§18.2). A guard miss matches no row, and every side effect
  (inbox delete, children insert, parent decrement) hangs off the rows the guarded
  UPDATE returned, so a miss changes nothing at all.
* Claims lock with ``FOR NO KEY UPDATE`` so they neither wait on nor block the
  ``KEY SHARE`` lock a signal insert takes on its target (§18.8).
* JSON arrives as text and is cast to ``jsonb`` in SQL (§18.3).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii
from typing import Any

from .schema import quote_ident

# C-accelerated JSON string encoder of the standard library.
_enc: Callable[[str], str] = encode_basestring_ascii

TERMINAL = ("done", "failed")
NON_TERMINAL = ("runnable", "executing", "awaiting_signal", "awaiting_children")
STATUSES = (*NON_TERMINAL, *TERMINAL)


@dataclass(frozen=True, slots=True)
class Stmt:
    """One statement ready to run: the query bytes and its parameters."""

    query: bytes
    params: dict[str, Any]


# Columns of a new row: one JSON array per row, in `InsertRows.params()` order.
_INSERT_SOURCE = """
    (SELECT e->>0 AS fsm, (e->>1)::int AS fsm_version, e->>2 AS step, e->3 AS state,
            e->>4 AS queue, (e->>5)::int2 AS priority, e->>6 AS partition_key,
            (e->>7)::timestamptz AS eligible_at, (e->>8)::float8 AS delay,
            decode(e->>9, 'hex') AS unique_key, e->>10 AS unique_scope,
            (e->>11)::int8 AS parent_id, j.ord
     FROM jsonb_array_elements(%(batch)s::jsonb) WITH ORDINALITY AS j(e, ord)) x
"""

# Insert in unique-key order: two batches carrying the same new keys then take the
# index's tuple locks in one global order and cannot deadlock (§18.7). Rows without a
# key keep their input order. Duplicates, against stored rows or within the batch,
# are dropped by ON CONFLICT whose inference predicate matches the index (§10).
_INSERT_BODY = """
INSERT INTO {s}.gen_durable AS g
    (fsm, fsm_version, step, state, queue, priority, partition_key, eligible_at,
     unique_key, unique_scope, parent_id)
SELECT x.fsm, x.fsm_version, x.step, x.state, x.queue,
       x.priority, x.partition_key,
       coalesce(x.eligible_at, now() + make_interval(secs => coalesce(x.delay, 0))),
       x.unique_key, coalesce(x.unique_scope::{s}.durable_status[], '{{}}'), x.parent_id
FROM {source}
{order}
{conflict}
RETURNING g.id, g.queue
"""

_ON_CONFLICT = "ON CONFLICT (unique_guard) WHERE unique_guard IS NOT NULL DO NOTHING"


_KEY_ORDER = "ORDER BY x.unique_key NULLS LAST, x.ord"

PICK_WALK = 16
"""Priorities the pick visits one by one before it scans the rest of the queue at once."""

# (id, token) pairs of claimed rows, as one JSON array of [id, token].
_CLAIMS = """(SELECT (e->>0)::int8 AS id, e->>1 AS token
     FROM jsonb_array_elements(%(claims)s::jsonb) e)"""


def claims_json(ids: list[int], tokens: list[str]) -> str:
    return "[" + ",".join(f"[{i},{_enc(t)}]" for i, t in zip(ids, tokens, strict=True)) + "]"


ERROR_HISTORY = 5
"""Entries kept in a row's ``errors`` array, oldest first (SPEC §5)."""


def _with_error(entry: str) -> str:
    """``g.errors`` with one more entry (a jsonb object expression) stamped with the
    database's clock, trimmed to the last :data:`ERROR_HISTORY` — evaluated only for
    rows that have an entry, so an outcome without one pays nothing for the history."""
    return (
        f"jsonb_path_query_array(g.errors || ({entry} || jsonb_build_object('at', now())), "
        f"'$[last - {ERROR_HISTORY - 1} to last]')"
    )


# The join of §7 for the rows `u` just wrote (id, parent_id, status): every one that
# became terminal decrements its parent's `children_pending`, taking the parent locks
# in id order so sibling batches on two nodes cannot deadlock; concurrent decrements
# serialize on the parent row and the one that reaches zero while the parent waits
# flips it to runnable (and nudges its queue).
_JOIN = """joined AS (
    SELECT parent_id, count(*)::int AS n FROM u
    WHERE status IN ('done', 'failed') AND parent_id IS NOT NULL
    GROUP BY parent_id
), parents AS (
    SELECT p.id, j.n FROM {s}.gen_durable p JOIN joined j ON p.id = j.parent_id
    ORDER BY p.id
    FOR NO KEY UPDATE OF p
), decrement AS (
    UPDATE {s}.gen_durable p SET
        children_pending = greatest(p.children_pending - j.n, 0),
        status = CASE WHEN p.status = 'awaiting_children' AND p.children_pending - j.n <= 0
                      THEN 'runnable' ELSE p.status END,
        eligible_at = CASE WHEN p.status = 'awaiting_children'
                            AND p.children_pending - j.n <= 0
                           THEN now() ELSE p.eligible_at END,
        updated_at = now()
    FROM parents j WHERE p.id = j.id
    RETURNING p.queue, p.status
), nudge AS (
    SELECT pg_notify(%(channel)s, d.queue)
    FROM (SELECT DISTINCT queue FROM decrement WHERE status = 'runnable') d
)"""


class Queries:
    """The engine's statements rendered for one schema."""

    def __init__(self, schema: str = "public") -> None:
        self.schema = schema
        s = quote_ident(schema)
        self._s = s

        def render(text: str, **extra: str) -> bytes:
            return text.format(s=s, claims=_CLAIMS, **extra).encode()

        join = _JOIN.format(s=s)

        # LISTEN/NOTIFY is only a nudge for idle schedulers (polling is the truth):
        # one notification per queue touched, never one per row.
        channel = f"gen_durable.{schema}"
        if len(channel.encode()) > 63:
            channel = "gen_durable." + hashlib.sha1(schema.encode()).hexdigest()
        self.channel = channel
        insert = (
            "WITH ins AS ("
            + _INSERT_BODY
            + """), nudge AS (
    SELECT pg_notify(%(channel)s, q.queue) FROM (SELECT DISTINCT queue FROM ins) q
)
SELECT array_agg(id ORDER BY id), (SELECT count(*) FROM nudge) FROM ins"""
        )
        self._insert = render(
            insert, source=_INSERT_SOURCE, order=_KEY_ORDER, conflict=_ON_CONFLICT
        )
        # A batch without unique keys has no index tuples to take in a global order,
        # and nothing that could conflict (a NULL key makes a NULL guard; new rows are
        # not executing): it skips the sort and the speculative insertion ON CONFLICT
        # costs per row (about 10% of the statement), inserting in input order.
        self._insert_unkeyed = render(insert, source=_INSERT_SOURCE, order="", conflict="")

        # -- pick (§8, §9) ---------------------------------------------------------
        # `prio` lists the queue's runnable priorities, most urgent first, one index
        # probe each (a loose index scan; a recursive query yields its rows in the
        # order it finds them), for at most PICK_WALK of them. For each, the first
        # branch of `cand` walks gen_durable_pick with queue and priority fixed, so
        # `eligible_at <= now()` bounds the scan: rows scheduled for later are not
        # read. (One scan over (queue, priority, eligible_at) with only the queue
        # fixed steps over every future row of a more urgent priority: 25 ms per pick
        # behind a million delayed rows.) Priorities past the walk are taken by the
        # second branch, that one scan, from the last walked priority on: a queue
        # with thousands of distinct priorities costs PICK_WALK probes more than the
        # single scan, never a probe per priority. UNION ALL runs its branches in
        # order and the outer LIMIT stops at the batch, so a less urgent priority is
        # only visited when the ones before it ran short.
        # Keys that already have an executing row are skipped by a probe of
        # gen_durable_partition_active — written as a closed range rather than `=`,
        # which is the same set of keys but gives the planner no equality to hash:
        # with `=` it may pick a hashed SubPlan that reads *every* executing row on
        # each pick (seen on a million-row table). `chosen` keeps the most urgent row
        # per key; the others were only locked for this statement and stay runnable.
        # The UNIQUE index on executing keys is the cross-node guard: a concurrent
        # pick that slipped past the probe fails on it and is retried by the caller.
        # The UPDATE finds the chosen rows through `id = ANY (ARRAY(...))`, a primary-
        # key lookup whatever the planner guesses of the batch size (a join on
        # `chosen` became a hash join over the whole table in a generic plan).
        # Inbox and children ride along in RETURNING (§17: no extra round trip).
        guard = """(g.partition_key IS NULL OR NOT EXISTS (
                SELECT 1 FROM {s}.gen_durable e
                WHERE e.partition_key >= g.partition_key AND e.partition_key <= g.partition_key
                  AND e.status = 'executing')
              AND NOT EXISTS (
                SELECT 1 FROM {s}.gen_durable h
                WHERE h.partition_key >= g.partition_key AND h.partition_key <= g.partition_key
                  AND h.status = 'runnable' AND h.eligible_at <= now()
                  AND (h.priority, h.eligible_at, h.id) < (g.priority, g.eligible_at, g.id)))"""
        self._pick = render(
            """
WITH RECURSIVE prio AS (
    (SELECT g.priority, 1 AS depth FROM {s}.gen_durable g
     WHERE g.queue = %(queue)s AND g.status = 'runnable'
     ORDER BY g.priority LIMIT 1)
    UNION ALL
    SELECT (SELECT g.priority FROM {s}.gen_durable g
            WHERE g.queue = %(queue)s AND g.status = 'runnable' AND g.priority > p.priority
            ORDER BY g.priority LIMIT 1),
           p.depth + 1
    FROM prio p WHERE p.priority IS NOT NULL AND p.depth < {walk}
), cand AS (
    SELECT w.id, w.partition_key, w.priority, w.eligible_at FROM (
        SELECT c.id, c.partition_key, c.priority, c.eligible_at
        FROM prio p CROSS JOIN LATERAL (
            SELECT g.id, g.partition_key, g.priority, g.eligible_at
            FROM {s}.gen_durable g
            WHERE g.queue = %(queue)s AND g.priority = p.priority AND g.status = 'runnable'
              AND g.eligible_at <= now()
              AND {guard}
            ORDER BY g.eligible_at
            LIMIT %(limit)s
            FOR NO KEY UPDATE OF g SKIP LOCKED
        ) c
        WHERE p.priority IS NOT NULL
        UNION ALL
        SELECT t.id, t.partition_key, t.priority, t.eligible_at FROM (
            SELECT g.id, g.partition_key, g.priority, g.eligible_at
            FROM {s}.gen_durable g
            WHERE g.queue = %(queue)s AND g.status = 'runnable' AND g.eligible_at <= now()
              AND g.priority > (SELECT p.priority FROM prio p WHERE p.depth = {walk})
              AND {guard}
            ORDER BY g.priority, g.eligible_at
            LIMIT %(limit)s
            FOR NO KEY UPDATE OF g SKIP LOCKED
        ) t
    ) w
    LIMIT %(limit)s
), chosen AS (
    SELECT c.id FROM (
        SELECT id, partition_key, row_number() OVER (
            PARTITION BY partition_key ORDER BY priority, eligible_at, id) AS rn
        FROM cand) c
    WHERE c.partition_key IS NULL OR c.rn = 1
)
UPDATE {s}.gen_durable g
SET status = 'executing', locked_by = %(token)s,
    lease_expires_at = now() + make_interval(secs => %(ttl)s), updated_at = now()
WHERE g.id = ANY (ARRAY(SELECT id FROM chosen))
RETURNING g.id, g.fsm, g.fsm_version, g.step, g.state::text, g.attempt, g.awaits,
    g.priority, g.partition_key,
    (SELECT json_agg(json_build_array(s.id, s.name, s.payload) ORDER BY s.id)::text
       FROM {s}.signals s WHERE s.target_id = g.id),
    (SELECT json_agg(json_build_array(c.id, c.fsm, c.status, c.state, c.result,
                                      c.last_error) ORDER BY c.id)::text
       FROM {s}.gen_durable c WHERE c.parent_id = g.id)
""",
            guard=guard.format(s=s),
            walk=str(PICK_WALK),
        )

        # -- lease maintenance (§8) ----------------------------------------------
        # Heartbeat and reaper skip rows locked by someone else (an outcome being
        # committed, a delivery): waiting would stall every other lease behind one
        # row, and a skipped row is either finishing now or caught next interval.
        self._heartbeat = render(
            """
WITH h AS (
    SELECT g.id FROM {s}.gen_durable g
    JOIN {claims} AS h ON g.id = h.id AND g.locked_by = h.token
    WHERE g.status = 'executing'
    ORDER BY g.id
    FOR NO KEY UPDATE OF g SKIP LOCKED
)
UPDATE {s}.gen_durable g SET lease_expires_at = now() + make_interval(secs => %(ttl)s)
FROM h WHERE g.id = h.id
RETURNING g.id
"""
        )
        # One lease the heartbeat skipped because another transaction holds the row:
        # this waits for that lock, so the extension lands before any reaper (which
        # skips locked rows) can take the row once the lock is released. The wait may
        # be long, hence clock_timestamp(), not the statement's start time.
        self._hold_lease = render(
            """
UPDATE {s}.gen_durable
SET lease_expires_at = clock_timestamp() + make_interval(secs => %(ttl)s)
WHERE id = %(id)s AND locked_by = %(token)s AND status = 'executing'
RETURNING id
"""
        )
        # Reads only gen_durable_lease below now(): cost follows the expired set.
        # Bounded per call; the caller loops while a full batch comes back. No ORDER
        # BY: any expired row will do, and without one the scan can stop at the limit
        # instead of collecting and sorting a large backlog on every batch.
        # Each expiry counts in `crash_count` and is written to the error history. A
        # row whose count reaches `crash_limit` is failed instead of returned: its step
        # kills or freezes every worker that runs it, and re-running it forever would
        # take node after node down (SPEC §5). `attempt` stays the one that crashed, as
        # for a Stop, and a failed child releases its parent's barrier like any
        # terminal child (§7): the join CTEs are the outcomes' own.
        self._reap = render(
            """
WITH x AS (
    SELECT id, crash_count + 1 >= %(crash_limit)s AS poisoned FROM {s}.gen_durable
    WHERE status = 'executing' AND lease_expires_at < now()
    LIMIT %(limit)s
    FOR NO KEY UPDATE SKIP LOCKED
), u AS (
    UPDATE {s}.gen_durable g SET
        status = (CASE WHEN x.poisoned THEN 'failed'
                       ELSE 'runnable' END)::{s}.durable_status,
        attempt = CASE WHEN x.poisoned THEN g.attempt ELSE g.attempt + 1 END,
        crash_count = g.crash_count + 1,
        last_error = CASE WHEN x.poisoned THEN format(
                'lease expired %%s times on step ''%%s'': the worker died or froze while '
                'running it', g.crash_count + 1, g.step) ELSE g.last_error END,
        errors = {expired},
        eligible_at = CASE WHEN x.poisoned THEN g.eligible_at ELSE now() END,
        locked_by = NULL, lease_expires_at = NULL, updated_at = now()
    FROM x WHERE g.id = x.id
    RETURNING g.id, g.parent_id, g.status
), {join}
SELECT u.id, u.status::text FROM u WHERE (SELECT count(*) FROM nudge) >= 0
""",
            join=join,
            expired=_with_error(
                "jsonb_build_object('step', g.step, 'attempt', g.attempt, 'type', "
                "'LeaseExpired', 'message', format('the lease of %%s expired before the step "
                "committed an outcome (%%s of crash_limit %%s)', g.locked_by, "
                "g.crash_count + 1, %(crash_limit)s::int), 'traceback', NULL)"
            ),
        )
        # Hand claimed rows back: drain, unknown machine (§13), stragglers. Attempt
        # unchanged unless `bump` (the step was interrupted). Locks in id order so two
        # releases cannot deadlock each other, and SKIP LOCKED so a client holding one
        # of the rows in an open transaction cannot hold a stop or a queue's feeder
        # hostage: a skipped row keeps its lease and falls to the reaper. `reason`
        # (unknown machine) is left in last_error for `show` and `status`.
        self._release = render(
            """
WITH r AS (
    SELECT g.id FROM {s}.gen_durable g
    JOIN {claims} AS r ON g.id = r.id AND g.locked_by = r.token
    WHERE g.status = 'executing'
    ORDER BY g.id
    FOR NO KEY UPDATE OF g SKIP LOCKED
)
UPDATE {s}.gen_durable g
SET status = 'runnable', locked_by = NULL, lease_expires_at = NULL, updated_at = now(),
    attempt = g.attempt + %(bump)s,
    eligible_at = CASE WHEN %(delay)s > 0 THEN now() + make_interval(secs => %(delay)s)
                       ELSE g.eligible_at END,
    last_error = coalesce(%(reason)s::text, g.last_error)
FROM r WHERE g.id = r.id
RETURNING g.id
"""
        )

        # -- outcomes (§4) ---------------------------------------------------------
        # Locks the rows about to park, in id order, in a statement of its own. The
        # `complete` statement that follows in the same transaction then takes a new
        # READ COMMITTED snapshot, which includes every signal whose delivery held the
        # row lock before us (§18.1): a check in the same statement as the wait for
        # the lock would use the older snapshot and miss it.
        self._lock_claimed = render(
            """
SELECT g.id FROM {s}.gen_durable g
JOIN {claims} AS l ON g.id = l.id AND g.locked_by = l.token
WHERE g.status = 'executing'
ORDER BY g.id
FOR NO KEY UPDATE OF g
"""
        )
        # Next, Replay, Await, Done and Stop for any number of rows in one statement.
        # A Next with `keep` (run-ahead) stays `executing` under the same claim instead
        # of going back through the queue, and the statement returns the row's inbox
        # (minus what this outcome consumed — deletes are not visible inside the
        # statement's snapshot), as a pick would. Children need no reload: a parent
        # runs only once all its children are terminal, so they cannot change under a
        # chain of Next steps. A kept row's indexed columns (status, eligible_at, the
        # lease — the heartbeat extends it) are left as they are, so the update can be
        # HOT: no index entries are written for a run-ahead step.
        # `u` is the guarded compare-and-set; `consumed` deletes the inbox rows the
        # step saw under the name it was woken by (§6); `joined` … `decrement` is the
        # join of §7 (`_JOIN`, shared with the reaper).
        self._complete = render(
            """
WITH o AS (
    SELECT (e->>0)::int8 AS id, e->>1 AS token, e->>2 AS kind, e->>3 AS step,
           nullif(e->4, 'null'::jsonb) AS state, e->5 AS result, e->>6 AS error,
           (e->>7)::float8 AS delay, e->>8 AS awaits, e->>9 AS consume,
           (e->>10)::int8[] AS seen, (e->>11)::bool AS keep, e->12 AS entry
    FROM jsonb_array_elements(%(batch)s::jsonb) e
), u AS (
    UPDATE {s}.gen_durable g SET
        status = (CASE o.kind
            WHEN 'next' THEN CASE WHEN o.keep THEN 'executing' ELSE 'runnable' END
            WHEN 'replay' THEN 'runnable'
            WHEN 'done' THEN 'done'
            WHEN 'stop' THEN 'failed'
            ELSE CASE WHEN EXISTS (
                    SELECT 1 FROM {s}.signals s
                    WHERE s.target_id = g.id AND s.name = o.awaits
                      AND s.id <> ALL (o.seen))
                 THEN 'runnable' ELSE 'awaiting_signal' END
            END)::{s}.durable_status,
        step = coalesce(o.step, g.step),
        state = coalesce(o.state, g.state),
        result = CASE WHEN o.kind = 'done' THEN o.result ELSE g.result END,
        last_error = CASE WHEN o.kind = 'stop' THEN o.error ELSE g.last_error END,
        errors = CASE WHEN o.entry IS NULL THEN g.errors ELSE {with_entry} END,
        attempt = CASE o.kind WHEN 'replay' THEN g.attempt + 1
                              WHEN 'done' THEN g.attempt
                              WHEN 'stop' THEN g.attempt
                              ELSE 0 END,
        eligible_at = CASE WHEN o.keep THEN g.eligible_at
                           WHEN o.kind = 'replay' THEN now() + make_interval(secs => o.delay)
                           WHEN o.kind IN ('done', 'stop') THEN g.eligible_at
                           ELSE now() END,
        awaits = CASE WHEN o.kind = 'await' THEN o.awaits END,
        locked_by = CASE WHEN o.keep THEN g.locked_by END,
        lease_expires_at = CASE WHEN o.keep THEN g.lease_expires_at END,
        crash_count = 0,
        updated_at = now()
    FROM o
    WHERE g.id = o.id AND g.locked_by = o.token AND g.status = 'executing'
    RETURNING g.id, g.parent_id, g.status, o.token
), consumed AS (
    DELETE FROM {s}.signals s
    USING u JOIN o ON o.id = u.id AND o.token = u.token
    WHERE o.kind <> 'await' AND s.target_id = u.id AND s.name = o.consume
      AND s.id = ANY (o.seen)
), {join}
SELECT u.id, u.status::text,
    CASE WHEN u.status = 'executing' THEN (
        SELECT json_agg(json_build_array(s.id, s.name, s.payload) ORDER BY s.id)::text
        FROM {s}.signals s JOIN o ON o.id = u.id AND o.token = u.token
        WHERE s.target_id = u.id
          AND NOT coalesce(s.name = o.consume AND s.id = ANY (o.seen), false))
    END, u.token
FROM u WHERE (SELECT count(*) FROM nudge) >= 0
""",
            join=join,
            with_entry=_with_error("o.entry"),
        )
        # ScheduleChilds (§7): children insert, inbox consume and the parent's park, as
        # one statement behind the parent's claim guard (`p`): a stale parent inserts
        # no children. The parent goes straight to runnable when none were inserted.
        self._schedule_childs = render(
            """
WITH p AS (
    SELECT g.id FROM {s}.gen_durable g
    WHERE g.id = %(id)s AND g.locked_by = %(token)s AND g.status = 'executing'
    FOR NO KEY UPDATE
), ins AS ("""
            + _INSERT_BODY
            + """), n AS (
    SELECT count(*)::int AS n FROM ins
), consumed AS (
    DELETE FROM {s}.signals s USING p
    WHERE s.target_id = p.id AND s.name = %(consume)s AND s.id = ANY (%(seen)s::int8[])
), u AS (
    UPDATE {s}.gen_durable g SET
        status = (CASE WHEN n.n = 0 THEN 'runnable'
                       ELSE 'awaiting_children' END)::{s}.durable_status,
        children_pending = n.n, step = %(next_step)s,
        state = coalesce(%(new_state)s::jsonb, g.state), attempt = 0, eligible_at = now(),
        errors = CASE WHEN %(entry)s::jsonb IS NULL THEN g.errors ELSE {with_entry} END,
        awaits = NULL, locked_by = NULL, lease_expires_at = NULL, crash_count = 0,
        updated_at = now()
    FROM p, n WHERE g.id = p.id
    RETURNING g.id, g.status
), nudge AS (
    SELECT pg_notify(%(channel)s, q.queue) FROM (SELECT DISTINCT queue FROM ins) q
)
SELECT u.id, u.status::text, (SELECT array_agg(id ORDER BY id) FROM ins),
       (SELECT count(*) FROM nudge)
FROM u
""",
            source=_INSERT_SOURCE + " JOIN p ON true",
            order=_KEY_ORDER,
            conflict=_ON_CONFLICT,
            with_entry=_with_error("%(entry)s::jsonb"),
        )

        # -- signals (§6, §18.1, §18.9) -------------------------------------------
        # `wake` is one UPDATE of the target by id alone, whatever its status: it
        # waits for the row lock (so a delivery racing a park is serialised with it)
        # and READ COMMITTED re-evaluates the SET on the latest committed version, so
        # the flip is decided on what the park actually committed. Non-flipping
        # deliveries rewrite the row unchanged (a HOT no-op) to hold that lock.
        # Not a `SELECT … FOR NO KEY UPDATE` CTE followed by a flip `SET status =
        # 'runnable'`: when that lock had to wait for a park, the UPDATE first builds
        # its new row from the statement's snapshot (still `executing`, lease held)
        # and PostgreSQL checks constraints on that row *before* re-reading the latest
        # version, so the delivery failed on gen_durable_lease_iff_executing. Here the
        # snapshot-based row is always consistent (unchanged, or a lease-free flip) —
        # see test_no_lost_wakeup_under_forced_interleaving.
        # The insert is refused for a terminal target, decided under the same lock.
        # A redelivery whose dedup_key is already stored wakes nobody: the parked step
        # has seen that signal (§18.5), so waking it would only re-run it for nothing.
        # `woke` is recognised by the flip's own `updated_at = now()`.
        self._signal = render(
            """
WITH wake AS (
    UPDATE {s}.gen_durable g SET
        status = CASE WHEN g.status = 'awaiting_signal' AND g.awaits = %(name)s
                           AND NOT d.dup
                      THEN 'runnable'::{s}.durable_status ELSE g.status END,
        eligible_at = CASE WHEN g.status = 'awaiting_signal' AND g.awaits = %(name)s
                                AND NOT d.dup
                           THEN now() ELSE g.eligible_at END,
        updated_at = CASE WHEN g.status = 'awaiting_signal' AND g.awaits = %(name)s
                               AND NOT d.dup
                          THEN now() ELSE g.updated_at END
    FROM (SELECT EXISTS (
            SELECT 1 FROM {s}.signals s
            WHERE s.target_id = %(id)s AND s.dedup_key = %(dedup_key)s) AS dup) d
    WHERE g.id = %(id)s
    RETURNING g.id, g.status, g.queue,
        g.status = 'runnable' AND g.awaits = %(name)s AND g.updated_at = now() AS woke
), ins AS (
    INSERT INTO {s}.signals (target_id, name, payload, dedup_key)
    SELECT w.id, %(name)s, %(payload)s::jsonb, %(dedup_key)s FROM wake w
    WHERE w.status NOT IN ('done', 'failed')
    ON CONFLICT (target_id, dedup_key) DO NOTHING
    RETURNING id
), nudge AS (
    SELECT pg_notify(%(channel)s, w.queue) FROM wake w WHERE w.woke
)
SELECT CASE WHEN w.woke THEN 'awaiting_signal' ELSE w.status::text END,
       (SELECT id FROM ins), w.woke AND (SELECT count(*) FROM nudge) > 0
FROM wake w
"""
        )

        # -- reads -------------------------------------------------------------------
        self._get = render(
            """
SELECT id, fsm, fsm_version, step, status::text, state, result, awaits, queue, priority,
       partition_key, eligible_at, attempt, last_error, locked_by, lease_expires_at,
       parent_id, children_pending, unique_key, unique_scope::text[], unique_guard,
       inserted_at, updated_at, crash_count, errors
FROM {s}.gen_durable WHERE id = %(id)s
"""
        )
        # The key's most urgent runnable row: names the instance a contended pick
        # wanted, for `partition.contended` telemetry (rare; off the hot path).
        self._next_for_key = render(
            """
SELECT id, fsm FROM {s}.gen_durable
WHERE queue = %(queue)s AND status = 'runnable' AND partition_key = %(key)s
ORDER BY priority, eligible_at LIMIT 1
"""
        )
        self._inbox = render(
            """
SELECT id, name, payload, dedup_key, inserted_at FROM {s}.signals
WHERE target_id = %(id)s ORDER BY id
"""
        )
        self._children = render(
            """
SELECT id, fsm, status::text, state, result, last_error FROM {s}.gen_durable
WHERE parent_id = %(id)s ORDER BY id
"""
        )

    # -- statement builders ----------------------------------------------------------

    def insert(self, rows: InsertRows) -> Stmt:
        """Insert any number of instances in one statement; returns inserted ids."""
        params = rows.params()
        params["channel"] = self.channel
        keyed = any(k is not None for k in rows.unique_key)
        return Stmt(self._insert if keyed else self._insert_unkeyed, params)

    def pick(self, queue: str, limit: int, token: str, ttl: float) -> Stmt:
        """Claim up to ``limit`` runnable rows of one queue for ``token``."""
        return Stmt(self._pick, {"queue": queue, "limit": limit, "token": token, "ttl": ttl})

    def heartbeat(self, ids: list[int], tokens: list[str], ttl: float) -> Stmt:
        """Extend the lease of every (id, token) still held."""
        return Stmt(self._heartbeat, {"claims": claims_json(ids, tokens), "ttl": ttl})

    def hold_lease(self, instance_id: int, token: str, ttl: float) -> Stmt:
        """Extend one lease, waiting for a lock somebody else holds on the row."""
        return Stmt(self._hold_lease, {"id": instance_id, "token": token, "ttl": ttl})

    def reap(self, limit: int, *, crash_limit: int) -> Stmt:
        """Return up to ``limit`` expired executing rows to runnable, attempt + 1, or
        fail those whose lease expired ``crash_limit`` times on their step. Returns
        (id, new status) per row."""
        return Stmt(
            self._reap, {"limit": limit, "crash_limit": crash_limit, "channel": self.channel}
        )

    def release(
        self,
        ids: list[int],
        tokens: list[str],
        delay: float = 0.0,
        *,
        bump: bool = False,
        reason: str | None = None,
    ) -> Stmt:
        """Hand claimed rows back to runnable; ``bump`` counts an interrupted attempt,
        ``reason`` (if given) is recorded in ``last_error``."""
        return Stmt(
            self._release,
            {
                "claims": claims_json(ids, tokens),
                "delay": delay,
                "bump": int(bump),
                "reason": reason,
            },
        )

    def lock_claimed(self, ids: list[int], tokens: list[str]) -> Stmt:
        """Lock claimed rows in id order before a park re-checks the inbox (§18.1)."""
        return Stmt(self._lock_claimed, {"claims": claims_json(ids, tokens)})

    def complete(self, batch: CompleteBatch) -> Stmt:
        """Apply Next/Replay/Await/Done/Stop outcomes.

        Returns (id, new status, inbox, claim token); the inbox only for rows kept for
        run-ahead.
        """
        params = batch.params()
        params["channel"] = self.channel
        return Stmt(self._complete, params)

    def schedule_childs(
        self,
        *,
        parent_id: int,
        token: str,
        next_step: str,
        state: str | None,
        consume: str | None,
        seen: list[int],
        children: InsertRows,
        error_entry: str | None = None,
    ) -> Stmt:
        """Insert children and park the parent at ``next_step`` (one atomic unit);
        ``error_entry`` (JSON object text) goes in the error history."""
        params = children.params()
        params.update(
            entry=error_entry,
            id=parent_id,
            token=token,
            next_step=next_step,
            new_state=state,
            consume=consume,
            seen=seen,
            channel=self.channel,
        )
        return Stmt(self._schedule_childs, params)

    def signal(self, target: int, name: str, payload: str, dedup_key: str | None) -> Stmt:
        """Store a signal and wake its target if parked on ``name``."""
        return Stmt(
            self._signal,
            {
                "id": target,
                "name": name,
                "payload": payload,
                "dedup_key": dedup_key,
                "channel": self.channel,
            },
        )

    def listen_sql(self) -> bytes:
        return b"LISTEN " + quote_ident(self.channel).encode()

    def get(self, instance_id: int) -> Stmt:
        return Stmt(self._get, {"id": instance_id})

    def next_for_key(self, queue: str, key: str) -> Stmt:
        return Stmt(self._next_for_key, {"queue": queue, "key": key})

    def inbox(self, instance_id: int) -> Stmt:
        return Stmt(self._inbox, {"id": instance_id})

    def children(self, instance_id: int) -> Stmt:
        return Stmt(self._children, {"id": instance_id})


@dataclass(slots=True)
class InsertRows:
    """Column arrays for a batch insert (already validated and encoded)."""

    fsm: list[str]
    fsm_version: list[int]
    step: list[str]
    state: list[str | None]
    queue: list[str]
    priority: list[int]
    partition_key: list[str | None]
    eligible_at: list[Any]
    delay: list[float | None]
    unique_key: list[bytes | None]
    unique_scope: list[str | None]
    parent_id: list[int | None]

    @classmethod
    def empty(cls) -> InsertRows:
        return cls([], [], [], [], [], [], [], [], [], [], [], [])

    def __len__(self) -> int:
        return len(self.fsm)

    def params(self) -> dict[str, Any]:
        rows = []
        for i in range(len(self.fsm)):
            key = self.unique_key[i]
            when = self.eligible_at[i]
            rows.append(
                f"[{_enc(self.fsm[i])},{self.fsm_version[i]},{_enc(self.step[i])},"
                f"{self.state[i] or '{}'},{_enc(self.queue[i])},{self.priority[i]},"
                f"{_opt(self.partition_key[i])},"
                f"{'null' if when is None else _enc(when.isoformat())},"
                f"{_num(self.delay[i])},{'null' if key is None else _enc(key.hex())},"
                f"{_opt(self.unique_scope[i])},{_num(self.parent_id[i])}]"
            )
        return {"batch": "[" + ",".join(rows) + "]"}


@dataclass(slots=True)
class CompleteBatch:
    """Outcomes for :meth:`Queries.complete`, each encoded at once as the JSON array
    the statement unpacks (no intermediate column lists: this runs once per step)."""

    rows: list[str]

    @classmethod
    def empty(cls) -> CompleteBatch:
        return cls([])

    def __len__(self) -> int:
        return len(self.rows)

    def add(
        self,
        *,
        id: int,
        token: str,
        kind: str,
        step: str | None = None,
        state: str | None = None,
        result: str | None = None,
        error: str | None = None,
        delay: float = 0.0,
        awaits: str | None = None,
        consume: str | None = None,
        seen: list[int] | tuple[int, ...] = (),
        keep: bool = False,
        error_entry: str | None = None,
    ) -> None:
        # `seen` travels as an int8[] literal; digits and commas need no JSON escaping.
        # `error_entry` (a JSON object, spliced as it is) is element 12 only when there
        # is one: a row without it reads as NULL there, and is not a byte longer.
        self.rows.append(
            f"[{id},{_enc(token)},{_enc(kind)},{_opt(step)},{state or 'null'},"
            f"{result or 'null'},{_opt(error)},{delay!r},{_opt(awaits)},"
            f'{_opt(consume)},"{{{",".join(map(str, seen))}}}",{"true" if keep else "false"}'
            f"{'' if error_entry is None else ',' + error_entry}]"
        )

    def params(self) -> dict[str, Any]:
        return {"batch": "[" + ",".join(self.rows) + "]"}


def _opt(value: str | None) -> str:
    return "null" if value is None else _enc(value)


def _num(value: float | int | None) -> str:
    return "null" if value is None else repr(value)
