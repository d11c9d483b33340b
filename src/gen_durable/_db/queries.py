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

import datetime as dt
from collections.abc import Sequence
from typing import Any

from .._trace import capture
from ..flow import RateLimit
from ..instance import Instance
from ..machine import Child, Signal
from .schema import quote_ident
from .statement import Stmt, channel_of
from .statements.common import ERROR_HISTORY, NON_TERMINAL, STATUSES, TERMINAL
from .statements.effects import SEND, SPAWN, Sent, Spawned
from .statements.flow import (
    DELETE_RATE_LIMIT,
    LIST_RATE_LIMITS,
    LIST_SCHEDULES,
    SCHEDULE_ADVANCE,
    SCHEDULE_SEEN,
    SET_RATE_LIMIT,
    Deleted,
    ScheduleRow,
)
from .statements.inserts import (
    INSERT,
    INSERT_UNKEYED,
    RESERVE_IDS,
    Inserted,
    InsertRows,
    Reserved,
)
from .statements.keys import (
    CHILDREN_KEY,
    GET_KEY,
    INBOX_KEY,
    SIGNAL_KEY,
    START_SIGNAL,
    KeyDelivered,
    Started,
)
from .statements.leases import HEARTBEAT, HOLD_LEASE, REAP, RELEASE, Reaped, Touched, claims_json
from .statements.outcomes import (
    COMPLETE,
    LOCK_CLAIMED,
    SCHEDULE_CHILDS,
    CompleteBatch,
    Completed,
    Scheduled,
)
from .statements.pick import NEXT_FOR_KEY, PICK, PICK_PLAIN, PICK_WALK, Claim, KeyHead
from .statements.reads import CHILDREN, GET, INBOX
from .statements.signals import LISTEN, SIGNAL, Delivered
from .statements.timers import FIRE_TIMERS, NEXT_DUE, Due, Fired

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

    def reserve_ids(self, n: int, queues: Sequence[str]) -> Stmt[Reserved]:
        """Reserve ``n`` ids for a batch COPY; notify ``queues`` when it commits."""
        params = {
            "table": f"{quote_ident(self.schema)}.gen_durable",
            "channel": self.channel,
            "queues": list(queues),
            "n": n,
        }
        return RESERVE_IDS.bind(self.schema, params)

    def pick(self, queue: str, limit: int, token: str, ttl: float) -> Stmt[Claim]:
        """Claim up to ``limit`` runnable rows of one queue for ``token``."""
        return PICK.bind(self.schema, {"queue": queue, "limit": limit, "token": token, "ttl": ttl})

    def pick_plain(self, queue: str, limit: int, token: str, ttl: float) -> Stmt[Claim]:
        """The pick without the rate-limit buckets: it leaves rate-limited rows alone
        and says so with one row held as ``limited`` (then :meth:`pick` is needed)."""
        params = {"queue": queue, "limit": limit, "token": token, "ttl": ttl}
        return PICK_PLAIN.bind(self.schema, params)

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
        consume: str | Sequence[str] | None,
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
            consume=[consume] if isinstance(consume, str) else consume,
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

    def _letter(self, name: str, payload: str, dedup_key: str | None, **to: Any) -> dict[str, Any]:
        """A delivery's parameters: the signal itself, and ``to`` — where it goes."""
        return {
            **to,
            "name": name,
            "payload": payload,
            "dedup_key": dedup_key,
            "channel": self.channel,
        }

    def signal_key(
        self, key: bytes, name: str, payload: str, dedup_key: str | None
    ) -> Stmt[KeyDelivered]:
        """Store a signal for the occupant of ``key`` (SPEC §20); says whether some
        row ever carried the key when none occupies it."""
        return SIGNAL_KEY.bind(self.schema, self._letter(name, payload, dedup_key, key=key))

    def start_signal(
        self, rows: InsertRows, name: str, payload: str, dedup_key: str | None
    ) -> Stmt[Started]:
        """Insert one keyed instance with its first signal (signal-with-start)."""
        params = rows.params()
        params.update(self._letter(name, payload, dedup_key))
        return START_SIGNAL.bind(self.schema, params)

    def get_key(self, key: bytes) -> Stmt[Instance]:
        """The occupant of ``key``, else the latest row that carried it."""
        return GET_KEY.bind(self.schema, {"key": key})

    def inbox_key(self, key: bytes) -> Stmt[Signal]:
        """The inbox of the row ``get_key`` finds."""
        return INBOX_KEY.bind(self.schema, {"key": key})

    def children_key(self, key: bytes) -> Stmt[Child]:
        """The children of the row ``get_key`` finds."""
        return CHILDREN_KEY.bind(self.schema, {"key": key})

    def spawn(self, owner: int, token: str, rows: InsertRows) -> Stmt[Spawned]:
        """Insert an outcome's ``spawn=`` instances behind its claim guard."""
        params = rows.params()
        params.update(owner=owner, token=token, channel=self.channel)
        return SPAWN.bind(self.schema, params)

    def send(
        self,
        owner: int,
        token: str,
        target_id: int | None,
        key: bytes | None,
        name: str,
        payload: str,
        dedup_key: str | None,
    ) -> Stmt[Sent]:
        """Deliver one of an outcome's ``send=`` signals behind its claim guard."""
        to = {"owner": owner, "token": token, "id": target_id, "key": key}
        return SEND.bind(self.schema, self._letter(name, payload, dedup_key, **to))

    def fire_timers(
        self, queues: list[str], limit: int, until: dt.datetime | str | None = None
    ) -> Stmt[Fired]:
        """Wake up to ``limit`` parked rows per queue whose deadline has passed (§19) —
        or, with ``until``, falls by then (``"infinity"``: every deadline)."""
        params = {"queues": queues, "limit": limit, "until": until, "channel": self.channel}
        return FIRE_TIMERS.bind(self.schema, params)

    def next_due(self, queue: str) -> Stmt[Due]:
        """When the queue's next deadline falls and its next runnable row is due."""
        return NEXT_DUE.bind(self.schema, {"queue": queue})

    def listen(self) -> Stmt[None]:
        """LISTEN on the schema's channel (the listener's connection)."""
        return LISTEN.bind(self.schema)

    def get(self, instance_id: int) -> Stmt[Instance]:
        return GET.bind(self.schema, {"id": instance_id})

    # -- flow control (SPEC §23) ---------------------------------------------------

    def set_rate_limit(self, name: str, rate: float, per: float, burst: float) -> Stmt[RateLimit]:
        params = {"name": name, "rate": rate, "per": per, "burst": burst}
        return SET_RATE_LIMIT.bind(self.schema, params)

    def delete_rate_limit(self, name: str) -> Stmt[Deleted]:
        return DELETE_RATE_LIMIT.bind(self.schema, {"name": name})

    def rate_limits(self) -> Stmt[RateLimit]:
        return LIST_RATE_LIMITS.bind(self.schema, {})

    def schedule_seen(self, name: str, cron: str, timezone: str, slot: Any) -> Stmt[ScheduleRow]:
        params = {"name": name, "cron": cron, "timezone": timezone, "slot": slot}
        return SCHEDULE_SEEN.bind(self.schema, params)

    def schedule_advance(self, name: str, slot: Any) -> Stmt[ScheduleRow]:
        return SCHEDULE_ADVANCE.bind(self.schema, {"name": name, "slot": slot})

    def schedules(self) -> Stmt[ScheduleRow]:
        return LIST_SCHEDULES.bind(self.schema, {})

    def next_for_key(self, queue: str, key: str) -> Stmt[KeyHead]:
        return NEXT_FOR_KEY.bind(self.schema, {"queue": queue, "key": key})

    def inbox(self, instance_id: int) -> Stmt[Signal]:
        return INBOX.bind(self.schema, {"id": instance_id})

    def children(self, instance_id: int) -> Stmt[Child]:
        return CHILDREN.bind(self.schema, {"id": instance_id})
