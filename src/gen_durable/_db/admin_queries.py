"""Read-only statements for operators: ``gen-durable status`` and the demo's progress.

None of these runs on the engine's hot path. They are kept apart from
:mod:`._db.queries` (the statements the runtime depends on) but follow its shape: one
method per statement, rendered once per schema with schema-qualified names, returned
as a :class:`~gen_durable._db.queries.Stmt`.
"""

from __future__ import annotations

from .queries import Stmt
from .schema import quote_ident


class AdminQueries:
    """Operator reads rendered for one schema."""

    def __init__(self, schema: str = "public") -> None:
        self.schema = schema
        s = quote_ident(schema)

        # Counts of every row by queue and status. Terminal rows sit in no partial
        # index (SPEC §2), so this is a sequential scan: acceptable for an operator
        # command or a demo, never to be run in a loop against a big production table.
        self._counts = f"""
SELECT queue, status::text, count(*) FROM {s}.gen_durable
GROUP BY queue, status ORDER BY queue, status
""".encode()

        # Every row of both tables, for `migrate --down`'s refusal to drop data.
        self._table_rows = f"""
SELECT (SELECT count(*) FROM {s}.gen_durable), (SELECT count(*) FROM {s}.signals)
""".encode()

        # The same counts split by machine, for the demo's live progress and summary.
        self._counts_by_fsm = f"""
SELECT fsm, status::text, count(*) FROM {s}.gen_durable
GROUP BY fsm, status ORDER BY fsm, status
""".encode()

        # Runnable backlog per queue. The predicate is gen_durable_pick's, so only
        # runnable rows are read. "Ready" rows are eligible now and waiting for a
        # worker; the age of the oldest ready row is how far behind the queue is.
        # Rows scheduled for later are counted apart: they are not late.
        self._backlog = f"""
SELECT queue,
       count(*) FILTER (WHERE eligible_at <= now()),
       count(*) FILTER (WHERE eligible_at > now()),
       extract(epoch FROM now() - min(eligible_at) FILTER (WHERE eligible_at <= now()))::float8
FROM {s}.gen_durable WHERE status = 'runnable'
GROUP BY queue ORDER BY queue
""".encode()

        # Runnable rows a node handed back for want of their machine (SPEC §13): the
        # scheduler's release writes "no machine 'name' vN on node ..." to last_error,
        # with eligible_at = updated_at + the retry delay. A later step keeps
        # last_error, but every progressing outcome sets eligible_at = updated_at, so
        # `eligible_at > updated_at` drops rows that have run since on a node with the
        # code (only a delayed Replay there would still count). Reads the runnable
        # rows only, as the backlog does.
        self._handed_back = f"""
SELECT fsm, fsm_version, count(*),
       (array_agg(last_error ORDER BY updated_at DESC))[1]
FROM {s}.gen_durable
WHERE status = 'runnable' AND last_error LIKE 'no machine %%' AND eligible_at > updated_at
GROUP BY fsm, fsm_version ORDER BY fsm, fsm_version
""".encode()

        # Executing rows whose lease has already expired: their worker died or stalled
        # and the reaper has not returned them yet. Walks gen_durable_lease (partial on
        # executing) from the oldest expiry, so the cost follows the expired set.
        self._expired = f"""
SELECT id, fsm, step, queue, locked_by,
       extract(epoch FROM now() - lease_expires_at)::float8
FROM {s}.gen_durable
WHERE status = 'executing' AND lease_expires_at < now()
ORDER BY lease_expires_at
LIMIT %(limit)s
""".encode()

    def handed_back(self) -> Stmt:
        """(fsm, fsm_version, rows, latest reason) of runnable rows handed back because
        a node lacked their machine."""
        return Stmt(self._handed_back, {})

    def table_rows(self) -> Stmt:
        """(instances, signals): how many rows a migration to version 0 would drop."""
        return Stmt(self._table_rows, {})

    def counts(self) -> Stmt:
        """(queue, status, count) for every queue and status present."""
        return Stmt(self._counts, {})

    def counts_by_fsm(self) -> Stmt:
        """(fsm, status, count) for every machine and status present."""
        return Stmt(self._counts_by_fsm, {})

    def backlog(self) -> Stmt:
        """(queue, ready, scheduled, oldest ready age in seconds or NULL) per queue."""
        return Stmt(self._backlog, {})

    def expired_leases(self, limit: int = 100) -> Stmt:
        """(id, fsm, step, queue, locked_by, seconds past expiry), oldest first."""
        return Stmt(self._expired, {"limit": limit})
