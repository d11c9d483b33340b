"""The engine's statements bound for one schema (SPEC §4–§10, §17, §18).

:class:`Queries` is what an engine holds: one object per schema whose methods take
Python values, encode them — batches as one jsonb parameter (:mod:`._db.batch`) —
and return a :class:`~gen_durable._db.statement.Stmt` for the runner
(:mod:`._db.runner`). The statements themselves, with their parameters, their result
columns and why each has its shape, are declared in :mod:`._db.statements`; every
name ends up in the schema-qualified text, so nothing depends on the server's
``search_path``.
"""

from __future__ import annotations

from .._trace import capture
from ..instance import Instance
from ..machine import Child, Signal
from .statement import Stmt, channel_of
from .statements.common import ERROR_HISTORY, NON_TERMINAL, STATUSES, TERMINAL
from .statements.inserts import INSERT, INSERT_UNKEYED, Inserted, InsertRows
from .statements.leases import HEARTBEAT, HOLD_LEASE, REAP, RELEASE, Reaped, Touched, claims_json
from .statements.outcomes import (
    COMPLETE,
    LOCK_CLAIMED,
    SCHEDULE_CHILDS,
    CompleteBatch,
    Completed,
    Scheduled,
)
from .statements.pick import NEXT_FOR_KEY, PICK, PICK_WALK, Claim, KeyHead
from .statements.reads import CHILDREN, GET, INBOX
from .statements.signals import LISTEN, SIGNAL, Delivered

__all__ = [
    "ERROR_HISTORY",
    "NON_TERMINAL",
    "PICK_WALK",
    "STATUSES",
    "TERMINAL",
    "CompleteBatch",
    "InsertRows",
    "Queries",
    "Stmt",
]


class Queries:
    """The engine's statements for one schema."""

    def __init__(self, schema: str = "public") -> None:
        self.schema = schema
        self.channel = channel_of(schema)

    def insert(self, rows: InsertRows) -> Stmt[Inserted]:
        """Insert any number of instances in one statement; returns inserted ids."""
        params = rows.params()
        params["channel"] = self.channel
        params["trace"] = capture()
        keyed = any(k is not None for k in rows.unique_key)
        return (INSERT if keyed else INSERT_UNKEYED).bind(self.schema, params)

    def pick(self, queue: str, limit: int, token: str, ttl: float) -> Stmt[Claim]:
        """Claim up to ``limit`` runnable rows of one queue for ``token``."""
        return PICK.bind(self.schema, {"queue": queue, "limit": limit, "token": token, "ttl": ttl})

    def heartbeat(self, ids: list[int], tokens: list[str], ttl: float) -> Stmt[Touched]:
        """Extend the lease of every (id, token) still held."""
        return HEARTBEAT.bind(self.schema, {"claims": claims_json(ids, tokens), "ttl": ttl})

    def hold_lease(self, instance_id: int, token: str, ttl: float) -> Stmt[Touched]:
        """Extend one lease, waiting for a lock somebody else holds on the row."""
        return HOLD_LEASE.bind(self.schema, {"id": instance_id, "token": token, "ttl": ttl})

    def reap(self, limit: int, *, crash_limit: int) -> Stmt[Reaped]:
        """Return up to ``limit`` expired executing rows to runnable, attempt + 1, or
        fail those whose lease expired ``crash_limit`` times on their step."""
        params = {"limit": limit, "crash_limit": crash_limit, "channel": self.channel}
        return REAP.bind(self.schema, params)

    def release(
        self,
        ids: list[int],
        tokens: list[str],
        delay: float = 0.0,
        *,
        bump: bool = False,
        reason: str | None = None,
    ) -> Stmt[Touched]:
        """Hand claimed rows back to runnable; ``bump`` counts an interrupted attempt,
        ``reason`` (if given) is recorded in ``last_error``."""
        claims = claims_json(ids, tokens)
        params = {"claims": claims, "delay": delay, "bump": int(bump), "reason": reason}
        return RELEASE.bind(self.schema, params)

    def lock_claimed(self, ids: list[int], tokens: list[str]) -> Stmt[Touched]:
        """Lock claimed rows in id order before a park re-checks the inbox (§18.1)."""
        return LOCK_CLAIMED.bind(self.schema, {"claims": claims_json(ids, tokens)})

    def complete(self, batch: CompleteBatch) -> Stmt[Completed]:
        """Apply Next/Replay/Await/Done/Stop outcomes; the inbox comes back only for
        rows kept for run-ahead."""
        params = batch.params()
        params["channel"] = self.channel
        return COMPLETE.bind(self.schema, params)

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
    ) -> Stmt[Scheduled]:
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
        return SCHEDULE_CHILDS.bind(self.schema, params)

    def signal(
        self, target: int, name: str, payload: str, dedup_key: str | None
    ) -> Stmt[Delivered]:
        """Store a signal and wake its target if parked on ``name``."""
        params = {
            "id": target,
            "name": name,
            "payload": payload,
            "dedup_key": dedup_key,
            "channel": self.channel,
            "trace": capture(),
        }
        return SIGNAL.bind(self.schema, params)

    def listen(self) -> Stmt[None]:
        """LISTEN on the schema's channel (the listener's connection)."""
        return LISTEN.bind(self.schema)

    def get(self, instance_id: int) -> Stmt[Instance]:
        return GET.bind(self.schema, {"id": instance_id})

    def next_for_key(self, queue: str, key: str) -> Stmt[KeyHead]:
        return NEXT_FOR_KEY.bind(self.schema, {"queue": queue, "key": key})

    def inbox(self, instance_id: int) -> Stmt[Signal]:
        return INBOX.bind(self.schema, {"id": instance_id})

    def children(self, instance_id: int) -> Stmt[Child]:
        return CHILDREN.bind(self.schema, {"id": instance_id})
