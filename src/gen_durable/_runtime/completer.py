"""Group commit of step outcomes (SPEC §4, §17).

Steps that finish close together share one transaction and one round trip: the first
outcome to arrive is flushed at once, and everything that arrives while a flush is in
flight rides the next one — batching comes from load, never from a timer, so an idle
engine adds no latency. Each submitter awaits the commit of its own outcome before the
step counts as done (the one guarantee, SPEC §0).

A flush is one ``complete`` statement for all Next/Replay/Await/Done/Stop outcomes
(parallel arrays through ``unnest``), one ``schedule_childs`` statement per fan-out,
and — when a batch parks rows — the ``lock_claimed`` statement that must precede the
inbox re-check (§18.1). Several statements are pipelined inside one transaction.

Failures: a lost connection is retried (the claim guard makes a retry of an outcome
that did commit match nothing); an error that is not transient splits the batch so one
bad outcome cannot hold back the others.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import AsyncConnectionPool

from .._db.queries import CompleteBatch, InsertRows, Queries, Stmt
from .stats import Stats

log = logging.getLogger("gen_durable")

STALE = None
"""Result of an outcome whose claim guard matched nothing (§18.2)."""

Committed = tuple[str, str | None]
"""(new status, inbox JSON) — the inbox for run-ahead rows only."""


@dataclass(slots=True)
class Completion:
    """One encoded outcome waiting for its commit."""

    id: int
    token: str
    kind: str  # next | replay | await | done | stop | schedule_childs
    step: str | None = None
    state: str | None = None
    result: str | None = None
    error: str | None = None
    delay: float = 0.0
    awaits: str | None = None
    consume: str | None = None
    seen: tuple[int, ...] = ()
    children: InsertRows | None = None
    keep: bool = False  # run-ahead: a Next that keeps its claim (see queries.complete)
    # The coerced state object, so a run-ahead step need not decode what it encoded.
    state_obj: Any = None
    started: float = 0.0  # perf_counter when the step began (telemetry duration)
    # The step's error as an error-history entry (JSON object text, history.py); None
    # for the usual outcome without an error, which then costs the statement nothing.
    error_entry: str | None = None
    # Set when submitted; resolved after the commit (None: stale).
    future: asyncio.Future[Committed | None] = field(init=False, repr=False)


class Completer:
    """Collects outcomes and commits them in groups."""

    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        queries: Queries,
        stats: Stats,
        *,
        max_batch: int = 1000,
        flushers: int = 2,
        retry_for: float = 30.0,
        parallel_at: int = 256,
    ) -> None:
        self._pool = pool
        self._q = queries
        self._stats = stats
        self._max_batch = max_batch
        self._flushers = flushers
        self._retry_for = retry_for
        self._parallel_at = parallel_at
        self._pending: list[Completion] = []
        self._active = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._deferred = 0

    def _undefer(self, item: Completion) -> None:
        self._deferred -= 1
        self._pending.append(item)
        self._kick()

    async def commit(self, item: Completion) -> Committed | None:
        """Queue ``item`` and wait for its commit; None when its claim was stale."""
        item.future = asyncio.get_running_loop().create_future()
        self._pending.append(item)
        self._kick()
        return await item.future

    def _kick(self) -> None:
        # One flush in flight is the norm: while it runs, the next batch grows, and
        # fewer, larger commits cost less on both sides than many small ones. A second
        # flush starts only when the backlog is large enough to pay for it.
        while self._pending and (
            self._active == 0
            or (self._active < self._flushers and len(self._pending) >= self._parallel_at)
        ):
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            self._active += 1
            self._idle.clear()
            task = asyncio.create_task(self._run(batch), name="gen_durable.completer")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait until every submitted outcome has been flushed (or failed)."""
        while self._pending or self._active or self._deferred:
            if self._deferred and not self._pending and not self._active:
                await asyncio.sleep(0.05)
                continue
            await self._idle.wait()

    async def _run(self, batch: list[Completion]) -> None:
        try:
            await self._flush_resilient(batch)
        except BaseException as exc:  # never leave a submitter waiting forever
            for item in batch:
                if not item.future.done():
                    item.future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._active -= 1
            if not self._pending and not self._active:
                self._idle.set()
            self._kick()

    async def _flush_resilient(self, batch: list[Completion]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._retry_for
        delay = 0.05
        while True:
            try:
                await self._flush(batch)
                return
            except pg_errors.LockNotAvailable:
                if len(batch) > 1:
                    # Isolate the row(s) a client transaction holds; the rest commit.
                    results = await asyncio.gather(
                        *(self._flush_resilient([item]) for item in batch),
                        return_exceptions=True,
                    )
                    for item, res in zip(batch, results, strict=True):
                        if isinstance(res, BaseException) and not item.future.done():
                            item.future.set_exception(res)
                    return
                # Give the flusher back and try this one again a little later.
                self._deferred += 1
                loop.call_later(0.1, self._undefer, batch[0])
                return
            except (pg_errors.DeadlockDetected, pg_errors.SerializationFailure) as exc:
                # Retried like a lost connection: bounded by the same deadline, backing
                # off so two colliding batches do not meet again at once.
                if loop.time() >= deadline:
                    raise
                log.warning("outcome batch of %d hit %s; retrying", len(batch), type(exc).__name__)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            except psycopg.OperationalError as exc:
                if loop.time() >= deadline:
                    raise
                log.warning(
                    "outcome batch of %d not committed (%s); retrying in %.2fs",
                    len(batch),
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            except psycopg.Error:
                if len(batch) == 1:
                    raise
                # Isolate the bad outcome: flush the others one by one.
                log.exception("outcome batch of %d failed; retrying one by one", len(batch))
                results = await asyncio.gather(
                    *(self._flush_resilient([item]) for item in batch), return_exceptions=True
                )
                for item, res in zip(batch, results, strict=True):
                    if isinstance(res, BaseException) and not item.future.done():
                        item.future.set_exception(res)
                return

    async def _flush(self, batch: Sequence[Completion]) -> None:
        simple = CompleteBatch.empty()
        parking_ids: list[int] = []
        parking_tokens: list[str] = []
        childs: list[Completion] = []
        for item in batch:
            if item.kind == "schedule_childs":
                childs.append(item)
                continue
            simple.add(
                id=item.id,
                token=item.token,
                kind=item.kind,
                step=item.step,
                state=item.state,
                result=item.result,
                error=item.error,
                delay=item.delay,
                awaits=item.awaits,
                consume=item.consume,
                seen=item.seen,
                keep=item.keep,
                error_entry=item.error_entry,
            )
            if item.kind == "await":
                parking_ids.append(item.id)
                parking_tokens.append(item.token)
        stmts: list[tuple[Stmt, str]] = []
        if parking_ids:
            stmts.append((self._q.lock_claimed(parking_ids, parking_tokens), "lock"))
        if len(simple):
            stmts.append((self._q.complete(simple), "complete"))
        for item in childs:
            assert item.children is not None
            stmts.append(
                (
                    self._q.schedule_childs(
                        parent_id=item.id,
                        token=item.token,
                        next_step=item.step or "",
                        state=item.state,
                        consume=item.consume,
                        seen=list(item.seen),
                        children=item.children,
                        error_entry=item.error_entry,
                    ),
                    "childs:" + item.token,
                )
            )
        statuses: dict[tuple[int, str], Committed] = {}
        # The completer's connections run with a short lock_timeout (see Node): a row
        # locked by somebody's open transaction fails the flush fast instead of
        # holding a flusher, and is retried on its own (LockNotAvailable above).
        async with self._pool.connection() as conn:
            if len(stmts) == 1:
                cur = await conn.execute(stmts[0][0].query, stmts[0][0].params)
                results = [await cur.fetchall()]
            else:
                async with conn.pipeline():
                    async with conn.transaction():
                        curs = [await conn.execute(s.query, s.params) for s, _ in stmts]
                    results = [await c.fetchall() for c in curs]
        self._stats.add(statements=len(stmts), commits=1, outcomes=len(batch))
        for (_, role), rows in zip(stmts, results, strict=True):
            if role == "complete":
                for row in rows:
                    statuses[(row[0], row[3])] = (row[1], row[2])
            elif role.startswith("childs:"):
                for row in rows:
                    statuses[(row[0], role[7:])] = (row[1], None)
        for item in batch:
            if not item.future.done():
                item.future.set_result(statuses.get((item.id, item.token), STALE))
