"""Operator control, client side: cancel, retry, list and the bulk forms (SPEC §21).

:class:`Control` is mixed into :class:`~gen_durable.Engine`; it needs the engine's pool,
its statements bound to the schema and its registry (a retry with a new state
validates it with the machine's model). Every call runs through the runner's error
boundary, so it raises only ``gd.*`` errors (or pydantic's ``ValidationError``).

A target is resolved by :meth:`Control._target` alone, so accepting another kind of
address (a business key) is a change in that one place.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import AsyncConnectionPool

from . import telemetry
from ._db import codec, runner
from ._db.statement import channel_of
from ._db.statements import control as sql
from ._db.statements import listing
from ._db.statements.common import NON_TERMINAL, TERMINAL
from ._keys import Target, check_target
from .errors import ConfigurationError, GenDurableError, InvalidFilter, NoSuchInstance
from .filters import Filter, build_filter, require_some
from .instance import Instance
from .registry import Registry, resolve

_Ids = list[int]  # `list` is a method name inside Control
_Rows = list[Any]

BATCH = 500
"""Rows per batch of a bulk form: each batch is one short transaction."""

DEADLOCK_TRIES = 5
"""A cancel locks parents before children and may deadlock with a child's terminal
commit (which locks the child first); PostgreSQL aborts one of the two and the cancel
runs again, this many times at most."""


BULK_STATUSES: dict[str, tuple[str, ...]] = {
    "cancel": NON_TERMINAL,
    "retry": ("failed", "cancelled"),
    "purge": TERMINAL,
}
"""The statuses each bulk action can change; the filters narrow within them."""


class Control:
    config: Any
    registry: Registry

    def _require_pool(self) -> AsyncConnectionPool[Any]:  # pragma: no cover - Engine's
        raise NotImplementedError

    async def get(self, target: Target) -> Instance | None:  # pragma: no cover - Engine's
        raise NotImplementedError

    async def _target(self, target: Target) -> int:
        """The instance id a control call addresses (one place to resolve targets): an
        id as it is, a key (SPEC §20) as the row ``get(key)`` returns."""
        checked = check_target(target)
        if isinstance(checked, int):
            return checked
        found = await self.get(checked)
        if found is None:
            raise NoSuchInstance(checked)
        return found.id

    # -- cancel ----------------------------------------------------------------------

    async def cancel(
        self, target: Target, reason: str | None = None, *, cascade: bool = True
    ) -> bool:
        """Cancel a live instance and, with ``cascade``, every live descendant, in one
        transaction (SPEC §21). ``False`` when it was already terminal;
        ``gd.NoSuchInstance`` for an unknown id. A running step is asked to stop and
        its outcome is dropped."""
        iid = await self._target(target)
        roots = await self._cancel([iid], _reason(reason), cascade)
        if not roots:
            raise NoSuchInstance(iid)
        return roots[0].cancelled

    async def _cancel(
        self, ids: list[int], reason: str | None, cascade: bool
    ) -> list[sql.Cancelled]:
        pool = self._require_pool()
        schema = self.config.schema
        params = {"reason": reason, "channel": channel_of(schema)}
        roots: list[sql.Cancelled] = []
        count = 0
        for attempt in range(DEADLOCK_TRIES):
            try:
                with runner.Boundary("cancel", pool):
                    async with pool.connection() as conn, conn.transaction():
                        roots, count = await _cancel_tree(conn, schema, ids, params, cascade)
                break
            except GenDurableError as exc:
                deadlock = isinstance(exc.__cause__, pg_errors.DeadlockDetected)
                if not deadlock or attempt == DEADLOCK_TRIES - 1:
                    raise
                await asyncio.sleep(0.01 * (attempt + 1))
        if telemetry.listening("instance.cancelled"):
            for root in roots:
                if root.cancelled:  # one event per call's root; count: the whole tree
                    telemetry.emit(
                        "instance.cancelled",
                        {"count": count},
                        {"id": root.id, "status": root.was, "reason": reason},
                    )
        return roots

    # -- retry -----------------------------------------------------------------------

    async def retry(self, target: Target, *, step: str | None = None, state: Any = None) -> bool:
        """Make a ``failed`` or ``cancelled`` instance runnable again at its step (or
        ``step``), attempt 0, optionally with a new ``state`` validated by the machine's
        model (SPEC §21). ``False`` for a live or ``done`` instance;
        ``gd.NoSuchInstance`` for an unknown id."""
        iid = await self._target(target)
        pool = self._require_pool()
        schema = self.config.schema
        with runner.Boundary("retry", pool):
            async with pool.connection() as conn, conn.transaction():
                rows = await runner.fetch(
                    conn, sql.LOCK_FOR_RETRY.bind(schema, {"id": iid}), raw=True
                )
                if not rows:
                    raise NoSuchInstance(iid)
                row = rows[0]
                if row.status not in ("failed", "cancelled"):
                    return False
                encoded = self._retry_state(row, step, state)
                attach = False
                if row.parent_id is not None and not row.detached:
                    parent = sql.LOCK_PARENT.bind(schema, {"id": row.parent_id})
                    found = await runner.fetch(conn, parent, raw=True)
                    attach = bool(found) and found[0].status == "awaiting_children"
                params = {
                    "id": iid,
                    "parent": row.parent_id,
                    "attach": attach,
                    "step": step,
                    "state": encoded,
                    "channel": channel_of(schema),
                }
                done = await runner.fetch(conn, sql.RETRY.bind(schema, params), raw=True)
        return bool(done)

    def _retry_state(self, row: sql.RetryTarget, step: str | None, state: Any) -> str | None:
        """The new state as stored text (validated by the machine's model), after
        checking the step exists; None when the state is kept."""
        if step is not None:
            codec.check_text(step, "step")
        if state is None:
            return None
        machine = resolve(self.registry, row.fsm, row.fsm_version)
        if machine is None:
            raise ConfigurationError(
                f"cannot validate a new state for instance {row.id}: machine "
                f"{row.fsm!r} v{row.fsm_version} is not known in this process"
            )
        value = machine.coerce_state(state, error=ConfigurationError)
        return codec.dumps(value, f"state of {machine.__gd_name__}")

    # -- list and the bulk forms -----------------------------------------------------

    async def list(
        self, *, limit: int = 100, before: int | None = None, **filters: Any
    ) -> list[Instance]:
        """One page of instances matching ``filters``, newest first; pass the last id
        of a page as ``before`` for the next one (SPEC §21)."""
        flt = build_filter(**filters)
        params = _page(flt, before, limit)
        return await self._filtered(listing.LIST, params)

    async def cancel_where(
        self, *, reason: str | None = None, cascade: bool = True, **filters: Any
    ) -> int:
        """Cancel every live instance matching ``filters`` (at least one), in batches;
        returns how many were cancelled (descendants included)."""
        n = 0
        async for ids in self._batches("cancel_where", BULK_STATUSES["cancel"], filters):
            roots = await self._cancel(ids, _reason(reason), cascade)
            n += sum(r.cancelled for r in roots)
        return n

    async def retry_where(self, **filters: Any) -> int:
        """Retry every failed or cancelled instance matching ``filters`` (at least one),
        in batches; returns how many were made runnable."""
        n = 0
        async for ids in self._batches("retry_where", BULK_STATUSES["retry"], filters):
            for iid in ids:
                try:
                    n += await self.retry(iid)
                except NoSuchInstance:
                    continue  # purged in between: nothing to retry
        return n

    async def purge_where(self, **filters: Any) -> int:
        """Delete every terminal instance matching ``filters`` (at least one) and its
        inbox, in batches, sparing children of live parents (SPEC §22); returns how
        many rows were deleted."""
        n = 0
        schema = self.config.schema
        async for ids in self._batches("purge_where", BULK_STATUSES["purge"], filters):
            rows = await runner.fetch(
                self._require_pool(), listing.PURGE.bind(schema, {"ids": ids})
            )
            n += len(rows)
        return n

    async def count_where(self, action: str, **filters: Any) -> int:
        """How many rows ``cancel_where``/``retry_where``/``purge_where`` (``action``)
        would change now: a dry run, the same filters."""
        flt = build_filter(**filters)
        require_some(flt, f"{action}_where")
        params = _page(flt, None, 1)
        del params["limit"]
        params["only"] = listing.status_array(BULK_STATUSES[action])
        rows = await self._filtered(listing.COUNT_MATCHING, params)
        return int(rows[0].count)

    async def _batches(
        self, call: str, only: Iterable[str], filters: dict[str, Any]
    ) -> AsyncIterator[_Ids]:
        flt = build_filter(**filters)
        require_some(flt, call)
        before: int | None = None
        while True:
            params = _page(flt, before, BATCH)
            params["only"] = listing.status_array(tuple(only))
            rows = await self._filtered(listing.MATCHING, params)
            if not rows:
                return
            ids = [r.id for r in rows]
            yield ids
            before = ids[-1]
            if len(ids) < BATCH:
                return

    async def _filtered(self, statement: Any, params: dict[str, Any]) -> _Rows:
        pool = self._require_pool()
        schema = self.config.schema
        with runner.Boundary(statement.name, pool):
            async with pool.connection() as conn, conn.transaction():
                await runner.fetch(conn, listing.CUSTOM_PLANS.bind(schema), raw=True)
                return await runner.fetch(conn, statement.bind(schema, params), raw=True)


async def _cancel_tree(
    conn: psycopg.AsyncConnection[Any],
    schema: str,
    ids: list[int],
    params: dict[str, Any],
    cascade: bool,
) -> tuple[list[sql.Cancelled], int]:
    """The roots, then each level of their descendants in a statement of its own (a
    fresh snapshot per level: children a parent inserted before we locked it are seen,
    SPEC §27.2). Returns the roots' rows and how many rows were cancelled."""
    roots = await runner.fetch(conn, sql.CANCEL.bind(schema, {**params, "ids": ids}), raw=True)
    count = sum(r.cancelled for r in roots)
    frontier = [r.id for r in roots if r.cancelled]
    while cascade and frontier:
        level = sql.CANCEL_CHILDREN.bind(schema, {**params, "ids": frontier})
        rows = await runner.fetch(conn, level, raw=True)
        count += sum(r.cancelled for r in rows)
        frontier = [r.id for r in rows]
    return roots, count


def _page(flt: Filter, before: int | None, limit: int) -> dict[str, Any]:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise _invalid(f"limit must be an int >= 1, not {limit!r}")
    if before is not None and (isinstance(before, bool) or not isinstance(before, int)):
        raise _invalid(f"before must be an instance id (int), not {before!r}")
    params = flt.params()
    params["statuses"] = listing.status_array(flt.statuses)
    params["before"] = before
    params["limit"] = limit
    return params


def _invalid(message: str) -> GenDurableError:
    return InvalidFilter(message)


def _reason(reason: object) -> str | None:
    return None if reason is None else codec.check_text(str(reason), "reason")
