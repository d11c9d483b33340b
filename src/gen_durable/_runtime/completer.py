"""Group commit of step outcomes (SPEC §4, §17).

Steps that finish close together share one transaction and one round trip: on an idle
completer the first outcome is flushed one turn of the event loop later, with every
outcome the steps already runnable produce in that turn (steps a commit or a pick
released together), and everything that arrives while a flush is in flight rides the
next one — batching comes from load, never from a timer, so an idle engine adds no
latency. Each submitter awaits the commit of its own outcome before the
step counts as done (the one guarantee, SPEC §0).

A flush is one ``complete`` statement for all Next/Replay/Await/Done/Stop outcomes
(one jsonb batch parameter), one ``schedule_childs`` statement per fan-out, and — when
a batch parks rows — the ``lock_claimed`` statement that must precede the inbox
re-check (§18.1). Several statements are pipelined inside one transaction.

Failures come in three kinds, and none of them may hold up unrelated outcomes:

* **Refused** — PostgreSQL rejects the data itself (a key too large for its index,
  a value it cannot parse, a statement timeout on a huge fan-out): retrying the same
  statement cannot help. The batch is bisected until the offending outcome stands
  alone, the others commit, and that one fails its submitter with
  :class:`~gen_durable.errors.OutcomeRefused`, which the executor routes through the
  step's ``handle`` (§18.4).
* **Locked** — a row is held by a client's open transaction; the completer's
  connections run with a short ``lock_timeout``. The row is isolated and retried on
  its own a little later, off the flusher.
* **Transient** — a lost connection, a deadlock, a serialization failure. Every item
  of the batch is set aside and retried after a backoff, each against its own
  deadline (``retry_for``), while newer outcomes keep flushing. The claim guard makes
  a retry of an outcome that did commit match nothing.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import AsyncConnectionPool

from .._db import runner
from .._db.queries import CompleteBatch, InsertRows, Queries, Stmt
from .._db.statements.outcomes import OUTCOME
from ..errors import OutcomeRefused
from . import effects as fx
from .effects import Encoded
from .stats import Stats

log = logging.getLogger("gen_durable")

DEFER_BELOW = 64
"""An idle completer waits one turn of the loop for more outcomes only while its last
flush held fewer than this many: at low load the wait turns several commits into one;
at high load starting at once pipelines the commit with the steps still computing."""

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
    # The awaited set (an Await), and the set the step was woken from (consumed by a
    # progressing outcome); a lone str is a set of one.
    awaits: str | Sequence[str] | None = None
    consume: str | Sequence[str] | None = None
    seen: tuple[int, ...] = ()
    children: InsertRows | None = None
    rate_limit: str | None = None  # None: the row keeps its own; "": cleared (§23)
    keep: bool = False  # run-ahead: a Next that keeps its claim (see queries.complete)
    # An Await's bound (§19): seconds from the commit, or an absolute aware datetime.
    timeout: float | None = None
    deadline: dt.datetime | None = None
    # The coerced state object, so a run-ahead step need not decode what it encoded.
    state_obj: Any = None
    started: float = 0.0  # perf_counter when the step began (telemetry duration)
    # Transient-failure retries: the loop time after which the item gives up, and the
    # next backoff.
    give_up_at: float = 0.0
    backoff: float = 0.0
    # The step's error as an error-history entry (JSON object text, history.py); None
    # for the usual outcome without an error, which then costs the statement nothing.
    error_entry: str | None = None
    # spawn=/send= of the outcome (SPEC §20); None for the usual outcome without any,
    # which then costs the flush one attribute test.
    effects: Encoded | None = None
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
        self._soon = False  # a flush is scheduled for the next turn of the loop
        self._last = 0  # outcomes in the last flush started: the load it saw
        self._tasks: set[asyncio.Task[None]] = set()
        # Items set aside until a timer puts them back in `_pending`.
        self._timers: dict[asyncio.TimerHandle, Completion] = {}

    async def commit(self, item: Completion) -> Committed | None:
        """Queue ``item`` and wait for its commit; None when its claim was stale.

        Raises :class:`OutcomeRefused` when the database refuses the outcome itself.
        """
        loop = asyncio.get_running_loop()
        item.future = loop.create_future()
        self._pending.append(item)
        self._idle.clear()
        if self._active:
            self._kick()  # it rides the flush after the one in flight (or a second one)
        elif self._last >= DEFER_BELOW:
            # Nothing in flight, but the last flush was large: many steps are running,
            # and starting now overlaps this commit with the computing of the others'
            # steps (waiting for all of them would make the two take turns).
            self._kick()
        elif not self._soon:
            # Nothing in flight and few steps running: flush after the steps already
            # runnable on the loop had their turn. Steps that a commit (or a pick)
            # released together end in the same turn of the loop, so their outcomes
            # share this flush instead of the first one going alone and the rest
            # waiting for it.
            self._soon = True
            loop.call_soon(self._kick_soon)
        return await item.future

    def _kick_soon(self) -> None:
        self._soon = False
        self._kick()
        if not self._pending and not self._active:
            self._idle.set()

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
            self._last = len(batch)
            self._start(batch)

    def _start(self, batch: list[Completion]) -> None:
        self._active += 1
        self._idle.clear()
        task = asyncio.create_task(self._run(batch), name="gen_durable.completer")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` for every submitted outcome to be flushed (or to
        fail); then give up on the rest — their rows keep their leases and fall to
        the reaper, exactly as if the node had died."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._pending or self._active or self._timers:
            left = deadline - loop.time()
            if left <= 0:
                break
            if self._timers and not self._pending and not self._active:
                await asyncio.sleep(min(0.05, left))
                continue
            try:
                await asyncio.wait_for(self._idle.wait(), left)
            except TimeoutError:
                break
        self.abandon()

    def abandon(self) -> None:
        """Drop whatever is still queued, deferred or in flight (stop only)."""
        for handle, item in self._timers.items():
            handle.cancel()
            item.future.cancel()
        self._timers.clear()
        for item in self._pending:
            item.future.cancel()
        self._pending.clear()
        for task in self._tasks:
            task.cancel()

    def _defer(self, item: Completion, delay: float) -> None:
        """Set ``item`` aside for ``delay`` seconds without holding a flusher."""
        if item.future.done():  # its step was cancelled meanwhile (a drain)
            return
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle | None = None

        def back() -> None:
            assert handle is not None
            self._timers.pop(handle, None)
            if not item.future.done():
                self._pending.append(item)
                self._kick()

        handle = loop.call_later(delay, back)
        self._timers[handle] = item

    async def _run(self, batch: list[Completion]) -> None:
        try:
            await self._flush_resilient(batch)
        except asyncio.CancelledError:  # abandoned by a stop
            for item in batch:
                item.future.cancel()
            raise
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
        try:
            await self._flush(batch)
        except pg_errors.LockNotAvailable:
            if len(batch) > 1:
                await self._bisect(batch)  # isolate the row(s) a client holds
            else:
                self._defer(batch[0], 0.1)
        except (psycopg.Error, OSError) as exc:
            if refused(exc):
                if len(batch) > 1:
                    await self._bisect(batch)
                    return
                item = batch[0]
                if not item.future.done():
                    item.future.set_exception(_refusal(item, exc))
                return
            self._retry_later(batch, exc)

    async def _bisect(self, batch: list[Completion]) -> None:
        """Flush the two halves separately: a refused outcome among many is found in
        about 2·log2(n) statements, and every other outcome commits."""
        mid = len(batch) // 2
        await asyncio.gather(self._flush_resilient(batch[:mid]), self._flush_resilient(batch[mid:]))

    def _retry_later(self, batch: list[Completion], exc: BaseException) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        failed = 0
        for item in batch:
            if item.future.done():
                continue
            if not item.give_up_at:
                item.give_up_at = now + self._retry_for
                item.backoff = 0.05
            if now >= item.give_up_at:
                item.future.set_exception(exc)
                failed += 1
                continue
            self._defer(item, item.backoff)
            item.backoff = min(item.backoff * 2, 2.0)
        log.warning(
            "outcome batch of %d not committed (%s: %s); retrying%s",
            len(batch),
            type(exc).__name__,
            str(exc).strip(),
            f", {failed} given up (their leases decide)" if failed else "",
        )

    async def _flush(self, batch: Sequence[Completion]) -> None:
        simple: list[str] = []
        parking_ids: list[int] = []
        parking_tokens: list[str] = []
        childs: list[Completion] = []
        effected: list[Completion] = []
        for item in batch:
            if item.effects is not None:
                effected.append(item)
            if item.kind == "schedule_childs":
                childs.append(item)
                continue
            simple.append(OUTCOME.row(item))  # a Completion has every OUTCOME field
            if item.kind == "await":
                parking_ids.append(item.id)
                parking_tokens.append(item.token)
        stmts: list[Stmt[Any]] = []
        if parking_ids:
            stmts.append(self._q.lock_claimed(parking_ids, parking_tokens))
        # Effects come before the outcomes they ride with: each locks its owner under
        # the claim guard, so the outcome's own guard is still true when it runs.
        effect_stmts, plan = fx.statements(self._q, effected) if effected else ([], [])
        first_effect = len(stmts)
        stmts.extend(effect_stmts)
        answers = len(stmts)  # the statements from here on answer outcomes
        if simple:
            stmts.append(self._q.complete(CompleteBatch(simple)))
        for item in childs:
            assert item.children is not None
            stmts.append(
                self._q.schedule_childs(
                    parent_id=item.id,
                    token=item.token,
                    next_step=item.step or "",
                    state=item.state,
                    consume=item.consume,
                    seen=list(item.seen),
                    children=item.children,
                    error_entry=item.error_entry,
                )
            )
        # The completer's connections run with a short lock_timeout (see Node): a row
        # locked by somebody's open transaction fails the flush fast instead of
        # holding a flusher, and is retried on its own (LockNotAvailable above).
        # Several statements are pipelined in one transaction; errors stay psycopg's,
        # classified by _flush_resilient.
        results = await runner.fetch_together(self._pool, stmts, raw=True)
        self._stats.add(statements=len(stmts), commits=1, outcomes=len(batch))
        # Every committed row names its claim, (id, token): that key finds the outcome
        # it answers, whichever statement wrote it.
        statuses: dict[tuple[int, str], Committed] = {}
        for rows in results[answers:]:
            for row in rows:  # Completed or Scheduled; only a kept row has an inbox
                statuses[(row.id, row.token)] = (row.status, row.inbox)
        if plan:
            fx.report(plan, results[first_effect:answers])
        for item in batch:
            if not item.future.done():
                item.future.set_result(statuses.get((item.id, item.token), STALE))


# Errors that say the statement itself is unacceptable, so the same statement would
# fail again: data PostgreSQL rejects (class 22), integrity and program limits (23,
# 54: an index row too large), a statement timeout (57014), and anything else with a
# SQLSTATE outside the connection/resource/operator classes. Connection loss,
# deadlocks, serialization failures, shutdowns and resource shortages are transient.
_REFUSED = (pg_errors.ProgramLimitExceeded, pg_errors.QueryCanceled)


def refused(exc: BaseException) -> bool:
    if isinstance(exc, _REFUSED):
        return True
    return (
        isinstance(exc, psycopg.DatabaseError)
        and not isinstance(exc, psycopg.OperationalError)
        and exc.sqlstate is not None
        and not isinstance(exc, pg_errors.SerializationFailure | pg_errors.DeadlockDetected)
    )


def _refusal(item: Completion, exc: BaseException) -> OutcomeRefused:
    what = "ScheduleChilds" if item.kind == "schedule_childs" else item.kind.capitalize()
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    err = OutcomeRefused(f"PostgreSQL refused the {what} outcome: {message}")
    err.__cause__ = exc
    return err
