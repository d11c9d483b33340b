"""Seed a gen_durable table with a realistic population, fast (set-based SQL only).

Used by the benchmarks that need a large, lived-in table::

    from _seed import seed
    counts = seed(conn, "public", 1_000_000)          # sync psycopg connection
    counts = await seed_async(aconn, "public", 1_000_000)

The population, by row (ids are assigned here, so the layout is deterministic):

* ``terminal_fraction`` of the rows are ``done`` (90%) or ``failed`` (10%), as in a
  table where finished instances accumulate;
* about 8% of the rows sit in *families* of 8 ids: a parent (``order.fulfil``) and 7
  children (``shipment.item``, queue ``fanout``) with ``parent_id`` set. An active
  family's parent is ``awaiting_children`` with ``children_pending = 4`` and its
  children are 3 terminal, 2 runnable, 1 executing, 1 awaiting a signal; a finished
  family is terminal throughout;
* the other non-terminal rows are runnable (60%), executing (10%, a tenth of them with
  an expired lease; live leases end an hour ahead, so none expires while a benchmark
  runs) or awaiting a signal (30%). Runnable rows spread over four queues
  (``default`` 50%, ``emails``, ``reports``, ``slow``), priorities 0/1/2/5, 20% with a
  future ``eligible_at``, 15% with a ``partition_key``, some re-tried (``attempt`` > 0)
  and some woken by a signal (``awaits`` set, signal in the inbox). Roughly 15% of the
  partition keys have an executing row (one at most, as the unique index demands);
* 20% of the rows carry a ``unique_key`` scoped to the non-terminal statuses;
* the inbox holds the signals of woken rows, unmatched ``reminder`` signals for a fifth
  of the parked rows and leftovers for 5% of the finished ones.

Statistics are refreshed (``ANALYZE``) at the end, as autovacuum would have done.
"""

from __future__ import annotations

from typing import Any

import psycopg

from gen_durable._db.schema import quote_ident

FAMILY_SIZE = 8
FAMILY_FRACTION = 0.08
# In an active family 3 of 8 rows are terminal; a finished family is all terminal.
_ACTIVE_TERMINAL = 3 / FAMILY_SIZE


def _u(expr: str, salt: int) -> str:
    """A deterministic uniform value in [0, 1) derived from ``expr``."""
    return f"((hashint8extended({expr}, {salt}) & 2147483647)::float8 / 2147483648.0)"


_ROWS = """
WITH src AS (
    SELECT i, (i - 1) / {fam_size} AS blk, (i - 1) %% {fam_size} AS pos
    FROM generate_series(1::bigint, %(n)s::bigint) AS i
), draw AS (
    SELECT i, blk, pos,
        {u_fam} < %(family_fraction)s AS fam, {u_fam_done} < %(family_done)s AS fam_done,
        {u3} AS r_terminal, {u4} AS r_failed, {u5} AS r_kind, {u6} AS r_queue,
        {u7} AS r_prio, {u8} AS r_when, {u9} AS r_key, {u10} AS r_retry, {u11} AS r_woken,
        {u12} AS r_unique, {u13} AS r_lease, {u14} AS r_busy,
        (i / %(keys)s) %% %(key_slots)s = floor({u_slot} * %(key_slots)s)::bigint AS key_slot
    FROM src
), kind AS (
    SELECT *, CASE
        WHEN fam AND pos = 0 THEN CASE WHEN fam_done THEN 'done' ELSE 'awaiting_children' END
        WHEN fam AND pos = 3 THEN 'failed'
        WHEN fam AND (fam_done OR pos < 3) THEN 'done'
        WHEN fam AND pos < 6 THEN 'runnable'
        WHEN fam AND pos = 6 THEN 'executing'
        WHEN fam THEN 'awaiting_signal'
        WHEN r_terminal < %(terminal)s THEN CASE WHEN r_failed < 0.9 THEN 'done' ELSE 'failed' END
        WHEN key_slot AND r_busy < 0.5 THEN 'executing'
        WHEN r_kind < 0.6 THEN 'runnable'
        WHEN r_kind < 0.7 THEN 'executing'
        ELSE 'awaiting_signal'
    END AS st,
    CASE WHEN fam THEN CASE WHEN pos = 0 THEN 'default' ELSE 'fanout' END
         WHEN r_queue < 0.5 THEN 'default' WHEN r_queue < 0.75 THEN 'emails'
         WHEN r_queue < 0.9 THEN 'reports' ELSE 'slow' END AS q,
    now() - make_interval(secs => (%(n)s - i)::float8 * 86400 / %(n)s) AS born
    FROM draw
)
INSERT INTO {s}.gen_durable (
    id, fsm, step, status, state, result, awaits, queue, priority, partition_key,
    eligible_at, attempt, last_error, locked_by, lease_expires_at, parent_id,
    children_pending, unique_key, unique_scope, inserted_at, updated_at)
OVERRIDING SYSTEM VALUE
SELECT %(base)s + i,
    CASE WHEN fam AND pos = 0 THEN 'order.fulfil' WHEN fam THEN 'shipment.item'
         WHEN q = 'default' THEN 'order.process' WHEN q = 'emails' THEN 'email.send'
         WHEN q = 'reports' THEN 'report.build' ELSE 'archive.sweep' END,
    CASE WHEN fam AND pos = 0 THEN 'collect' WHEN fam THEN 'pack'
         ELSE (ARRAY['start', 'charge', 'ship'])[1 + i %% 3] END,
    st::{s}.durable_status,
    jsonb_build_object('order', %(base)s + i, 'items', i %% 7, 'customer', 'c-' || i %% 5000),
    CASE WHEN st = 'done' THEN jsonb_build_object('ok', true, 'total', i %% 1000) END,
    CASE WHEN st = 'awaiting_signal'
         THEN ARRAY[(ARRAY['approval', 'payment', 'webhook'])[1 + i %% 3]]
         WHEN st = 'runnable' AND NOT fam AND r_woken < 0.1 THEN ARRAY['approval'] END,
    q,
    (CASE WHEN r_prio < 0.6 THEN 0 WHEN r_prio < 0.85 THEN 1 WHEN r_prio < 0.95 THEN 2
          ELSE 5 END)::int2,
    CASE WHEN NOT fam AND ((st = 'executing' AND key_slot AND r_busy < 0.5)
                           OR (st = 'runnable' AND r_key < 0.15))
         THEN 'acct-' || (%(base)s + i %% %(keys)s) END,
    CASE WHEN st = 'runnable' AND r_when >= 0.8
         THEN now() + make_interval(secs => (r_when - 0.8) * 18000)
         WHEN st = 'runnable' THEN now() - make_interval(secs => 1 + r_when * 3600)
         ELSE born END,
    CASE WHEN st = 'runnable' AND r_retry < 0.1 THEN 1 + i %% 3 ELSE 0 END,
    CASE WHEN st = 'failed' THEN 'TimeoutError: upstream did not answer within 30s' END,
    CASE WHEN st = 'executing' THEN 'node-' || i %% 3 || ':' || i END,
    CASE WHEN st <> 'executing' THEN NULL
         WHEN r_lease < 0.1 THEN now() - make_interval(secs => 1 + r_lease * 6000)
         ELSE now() + make_interval(secs => 3600 + r_lease * 60) END,
    CASE WHEN fam AND pos > 0 THEN %(base)s + blk * {fam_size} + 1 END,
    CASE WHEN st = 'awaiting_children' THEN 4 ELSE 0 END,
    CASE WHEN r_unique < 0.2 THEN convert_to('order-' || (%(base)s + i), 'UTF8') END,
    CASE WHEN r_unique < 0.2
         THEN '{{runnable,executing,awaiting_signal,awaiting_children}}'::{s}.durable_status[]
         ELSE '{{}}' END,
    born, born + interval '1 second'
FROM kind
"""

_SIGNALS = """
INSERT INTO {s}.signals (target_id, name, payload, dedup_key, inserted_at)
SELECT g.id,
    CASE WHEN g.status = 'runnable' THEN g.awaits[1] ELSE 'reminder' END,
    jsonb_build_object('source', 'seed', 'ref', g.id), 'evt-' || g.id, g.updated_at
FROM {s}.gen_durable g
WHERE g.id > %(base)s AND (
    (g.status = 'runnable' AND g.awaits IS NOT NULL)
    OR (g.status = 'awaiting_signal' AND {u_sig} < 0.2)
    OR (g.status IN ('done', 'failed') AND {u_sig} < 0.05))
"""

_SETVAL = """
SELECT setval(pg_get_serial_sequence(%(table)s, 'id'), (SELECT max(id) FROM {s}.gen_durable))
"""

_COUNTS = """
SELECT
    (SELECT count(*) FROM {s}.gen_durable),
    (SELECT coalesce(jsonb_object_agg(status, n), '{{}}') FROM (
        SELECT status::text, count(*) AS n FROM {s}.gen_durable GROUP BY 1) x),
    (SELECT coalesce(jsonb_object_agg(queue, n), '{{}}') FROM (
        SELECT queue, count(*) AS n FROM {s}.gen_durable WHERE status = 'runnable'
        GROUP BY 1) y),
    (SELECT count(*) FROM {s}.gen_durable
     WHERE status = 'executing' AND lease_expires_at < now()),
    (SELECT count(*) FROM {s}.gen_durable WHERE parent_id IS NOT NULL),
    (SELECT count(*) FROM {s}.signals)
"""


def seed_statements(
    schema: str, rows: int, terminal_fraction: float = 0.7, *, base: int = 0
) -> list[tuple[str, dict[str, Any]]]:
    """The statements that append ``rows`` instances after id ``base``, in order."""
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    if not 0.0 <= terminal_fraction <= 1.0:
        raise ValueError(f"terminal_fraction must be in [0, 1], got {terminal_fraction}")
    s = quote_ident(schema)
    # Share of families that are finished, so that families match the overall
    # terminal fraction; the loose rows make up whatever clamping leaves over.
    family_done = min(
        1.0, max(0.0, (terminal_fraction - _ACTIVE_TERMINAL) / (1 - _ACTIVE_TERMINAL))
    )
    family_terminal = _ACTIVE_TERMINAL + (1 - _ACTIVE_TERMINAL) * family_done
    loose = (terminal_fraction - FAMILY_FRACTION * family_terminal) / (1 - FAMILY_FRACTION)
    keys = max(10, rows // 100)
    params: dict[str, Any] = {
        "n": rows,
        "base": base,
        "terminal": min(1.0, max(0.0, loose)),
        "family_fraction": FAMILY_FRACTION,
        "family_done": family_done,
        "keys": keys,
        "key_slots": rows // keys + 1,
    }
    draws = {f"u{k}": _u("i", k) for k in range(3, 15)}
    insert = _ROWS.format(
        s=s,
        fam_size=FAMILY_SIZE,
        u_fam=_u("blk", 1),
        u_fam_done=_u("blk", 2),
        u_slot=_u(f"i %% {keys}", 16),
        **draws,
    )
    return [
        (insert, params),
        (_SIGNALS.format(s=s, u_sig=_u("g.id", 15)), {"base": base}),
        (_SETVAL.format(s=s), {"table": f"{s}.gen_durable"}),
        (f"ANALYZE {s}.gen_durable", {}),
        (f"ANALYZE {s}.signals", {}),
    ]


def _base_query(schema: str) -> str:
    return f"SELECT coalesce(max(id), 0) FROM {quote_ident(schema)}.gen_durable"


def _counts(row: tuple[Any, ...] | None) -> dict[str, Any]:
    assert row is not None
    total, by_status, runnable_by_queue, expired, children, signals = row
    return {
        "rows": total,
        "by_status": by_status,
        "runnable_by_queue": runnable_by_queue,
        "expired_leases": expired,
        "children": children,
        "signals": signals,
    }


def seed(
    conn: psycopg.Connection[Any], schema: str, rows: int, terminal_fraction: float = 0.7
) -> dict[str, Any]:
    """Append ``rows`` instances to ``schema``'s table; returns what the table holds."""
    row = conn.execute(_base_query(schema)).fetchone()
    base = int(row[0]) if row else 0
    with conn.transaction():
        for query, params in seed_statements(schema, rows, terminal_fraction, base=base):
            conn.execute(query.encode(), params, prepare=False)
    return _counts(conn.execute(_COUNTS.format(s=quote_ident(schema)).encode()).fetchone())


async def seed_async(
    conn: psycopg.AsyncConnection[Any], schema: str, rows: int, terminal_fraction: float = 0.7
) -> dict[str, Any]:
    """:func:`seed` on an async connection."""
    row = await (await conn.execute(_base_query(schema))).fetchone()
    base = int(row[0]) if row else 0
    async with conn.transaction():
        for query, params in seed_statements(schema, rows, terminal_fraction, base=base):
            await conn.execute(query.encode(), params, prepare=False)
    cur = await conn.execute(_COUNTS.format(s=quote_ident(schema)).encode())
    return _counts(await cur.fetchone())
