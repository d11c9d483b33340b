"""An instance as a client reads it: a frozen snapshot of one row (SPEC §2, §11)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Instance:
    """A frozen snapshot of one ``gen_durable`` row (SPEC §2 column names)."""

    id: int
    fsm: str
    fsm_version: int
    step: str
    status: str
    state: Any
    result: Any
    awaits: tuple[str, ...] | None  # the awaited set (schema version with await sets)
    queue: str
    priority: int
    partition_key: str | None
    eligible_at: dt.datetime
    attempt: int
    last_error: str | None
    locked_by: str | None
    lease_expires_at: dt.datetime | None
    parent_id: int | None
    children_pending: int
    unique_key: bytes | None
    unique_scope: tuple[str, ...]
    unique_guard: bytes | None
    inserted_at: dt.datetime
    updated_at: dt.datetime
    # Schema version 3 (SPEC §5): lease expiries of the current step since its last
    # committed outcome, and the last few errors, oldest first — each a dict with
    # step, attempt, at (ISO time), type, message and traceback.
    crash_count: int
    errors: tuple[dict[str, Any], ...]
    # Control (SPEC §21): a retried child whose parent had already moved on; its end
    # no longer touches the parent's barrier.
    detached: bool
    # SPEC §19: when the current wait ends without a signal (None: no bound).
    await_deadline: dt.datetime | None = None

    @property
    def terminal(self) -> bool:
        return self.status in ("done", "failed", "cancelled")
