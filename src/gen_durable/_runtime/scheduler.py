"""The per-queue feeder (SPEC §8, §9).

One scheduler serves one queue: at most ``concurrency`` steps running (``slots.py``: a
step gives its slot up while its outcome commits), at most ``concurrency + prefetch``
rows claimed (started, buffered, waiting for a rate-limit token; an unset ``prefetch``
adapts to the rate steps start at), and a pick only when ``min_demand`` of those are
free, unless fully idle. A step that returns starts the next buffered claim itself; a
finished task sets ``wake`` so the refill pick runs beside the commits; an empty pick
doubles the idle wait up to ``max_poll_interval``; a LISTEN nudge also sets ``wake``.

A scheduler is a service of its node (``service.py``): the supervisor runs its loop and
restarts it if it raises. Its wiring is explicit (statements, database, executor,
registry); what it holds it registers with the node's ``Holdings``, which the
heartbeat extends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors as pg_errors

from .. import telemetry
from .._db.queries import Queries, Stmt
from ..registry import Registry, resolve
from .buffer import ClaimBuffer, TokenWaits
from .claims import Holdings
from .config import Config
from .executor import Claim, Executor
from .handback import UnknownMachines
from .limits import UnknownLimits, contended_key, report_held
from .service import Service
from .slots import Prefetch, Slots
from .stats import Stats

log = logging.getLogger("gen_durable")

LIMITED_HOLD = 5.0
"""Seconds a queue keeps the full pick (buckets, K slots) after it last met a rate-limited
or K > 1 row; else it picks with the plain one, as cheap as before flow control (§23)."""


@dataclass(frozen=True, slots=True)
class QueueWiring:
    """What a queue's scheduler needs from its node, and nothing else."""

    config: Config
    queries: Queries
    fetch: Callable[[Stmt], Awaitable[list[Any]]]
    release: Callable[..., Awaitable[int]]
    executor: Executor
    registry: Registry
    stats: Stats
    holdings: Holdings
    unknown: UnknownMachines
    unknown_limits: UnknownLimits
    next_token: Callable[[], str]
    node_id: str


class QueueScheduler(Service):
    def __init__(self, wiring: QueueWiring, queue: str, concurrency: int) -> None:
        self.name = f"queue.{queue}"
        self._w = wiring
        self._cfg = wiring.config
        self.queue = queue
        self.concurrency = concurrency
        self._prefetch = Prefetch(wiring.config.prefetch, concurrency)
        self.wake = asyncio.Event()
        self._slots = Slots(concurrency, self._start_buffered)
        self.running = self._slots.running  # steps whose code runs now
        self._buffer = ClaimBuffer()  # the machine is resolved once, at pick
        self._releases: set[asyncio.Task[int]] = set()
        self._waiting = TokenWaits()  # a timer moves each into the buffer when due (§23)
        self._due: float | None = None  # monotonic time a held row is due (§23)
        self._full_until = 0.0  # monotonic time until which the full pick is used (§23)
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._task_of: dict[int, asyncio.Task[None]] = {}
        self._loop_done = asyncio.Event()
        self._loop_done.set()  # until the supervisor runs it
        wiring.holdings.register(self.name, self.held, self._buffer.renewed)

    # -- lifecycle -----------------------------------------------------------------

    async def run(self) -> None:
        """The feeder loop, run (and restarted if it raises) by the supervisor."""
        self._loop_done.clear()
        try:
            await self._loop()
        finally:
            self._loop_done.set()

    def held(self) -> list[Claim]:
        """Every row this scheduler holds a claim on: running, buffered, waiting."""
        return [*self._slots.claims(), *self._buffer.claims(), *self._waiting.claims()]

    async def drain(self, deadline: float, cancel_loop: Callable[[], Awaitable[None]]) -> None:
        """Stop picking, hand buffered rows back at once, give running steps until
        ``deadline`` (loop time), then hand back every row still running — ``async``
        and ``def`` steps alike — with the attempt counted (SPEC §8)."""
        self._stopping = True
        self.wake.set()
        loop = asyncio.get_running_loop()
        # A pick stuck on the database must not hold the shutdown hostage: past the
        # deadline the loop is cancelled.
        try:
            await asyncio.wait_for(self._loop_done.wait(), max(0.0, deadline - loop.time()))
        except TimeoutError:
            await cancel_loop()
        buffered = [*self._buffer.take_all(), *self._waiting.take_all()]
        released = await self._w.release(buffered) if buffered else 0
        if telemetry.listening("scheduler.drain"):
            telemetry.emit(
                "scheduler.drain",
                {"released": released, "in_flight": len(self.running)},
                {"queue": self.queue},
            )
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=max(0.0, deadline - loop.time()))
        if not pending:
            return
        stragglers = self._slots.claims()
        log.warning(
            "queue %s: %d step(s) still running at the drain limit; handing them back "
            "(they will run again)",
            self.queue,
            len(pending),
        )
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        # Interrupted mid-step: count the attempt and hand them back now rather than
        # making them wait for the lease. A ``def`` step's thread runs on; releasing
        # its row clears the claim, so whatever it returns would be stale (§18.2).
        await self._w.release(stragglers, bump=True)

    # -- the feeder ----------------------------------------------------------------

    async def _loop(self) -> None:
        cfg = self._cfg
        delay = cfg.poll_interval
        error_delay = 0.1
        while not self._stopping:
            self._start_buffered()
            held = len(self._slots) + len(self._buffer) + len(self._waiting)
            prefetch = self._prefetch.update(self._slots.started)
            capacity = self.concurrency + prefetch - held
            idle = held == 0
            min_demand = cfg.min_demand_for(self.concurrency, prefetch)
            if capacity <= 0 or (capacity < min_demand and not idle):
                await self._wait(cfg.poll_interval)
                continue
            try:
                got = await self._pick(capacity)
                error_delay = 0.1
            except (psycopg.OperationalError, psycopg.InterfaceError, OSError) as exc:
                log.warning(
                    "queue %s: pick failed (%s); retrying in %.1fs", self.queue, exc, error_delay
                )
                await self._wait(error_delay)
                error_delay = min(error_delay * 2, cfg.max_poll_interval)
                continue
            except Exception:
                log.exception("queue %s: pick failed; retrying", self.queue)
                await self._wait(error_delay)
                error_delay = min(error_delay * 2, cfg.max_poll_interval)
                continue
            if got:
                delay = cfg.poll_interval
                continue
            due = self._held_due()
            if due is not None and due < delay:
                # A row held for a token is due sooner than the next poll (§23).
                await self._wait(due)
                delay = cfg.poll_interval
                continue
            if await self._wait(delay):
                continue
            delay = min(delay * 2, cfg.max_poll_interval)

    def _held_due(self) -> float | None:
        """Seconds until the earliest row a pick held for its rate limit is due."""
        if self._due is None:
            return None
        left = self._due - time.monotonic()
        if left <= 0:  # due now: one more look, then forget it (kept across wake-ups)
            self._due = None
            return 0.0
        return left

    async def _wait(self, timeout: float) -> bool:
        """Wait for a wake-up or ``timeout``; True when woken."""
        if self._stopping:
            return True
        # asyncio.timeout, not wait_for: no task per wait (the feeder waits once or
        # twice per refill), and a wake that is already set returns without yielding.
        try:
            async with asyncio.timeout(timeout):
                await self.wake.wait()
            woken = True
        except TimeoutError:
            woken = False
        self.wake.clear()
        return woken

    async def _pick(self, limit: int, full: bool = False) -> int:
        w = self._w
        token = w.next_token()
        started = time.perf_counter()
        lease_until = time.monotonic() + self._cfg.lease_ttl  # before the database's now()
        full = full or time.monotonic() < self._full_until
        pick = w.queries.pick if full else w.queries.pick_plain
        stmt = pick(self.queue, limit, token, self._cfg.lease_ttl)
        for attempt in range(3):
            try:
                rows = await w.fetch(stmt)
                break
            except pg_errors.UniqueViolation as exc:
                # Two picks raced past the executing-key probe; the unique index on
                # executing keys refused the second (SPEC §9). Nothing was claimed.
                key = contended_key(exc)
                log.debug("queue %s: partition key %r contended; re-picking", self.queue, key)
                if telemetry.listening("partition.contended"):
                    iid, fsm = await self._contended_row(key)
                    telemetry.emit(
                        "partition.contended",
                        {"count": 1},
                        {"id": iid, "fsm": fsm, "partition_key": key},
                    )
                if attempt == 2:
                    return 0
        w.stats.add(statements=1, commits=1, picks=1, picked=len(rows))
        if telemetry.listening("pick.stop"):
            telemetry.emit(
                "pick.stop",
                {"count": len(rows), "demand": limit, "duration": time.perf_counter() - started},
                {"queue": self.queue, "node": w.node_id},
            )
        if not rows:
            return 0
        limited = rows[-1].held == "limited"  # the plain pick left rate-limited rows
        if full and any(r.rate_limit is not None or r.held is not None for r in rows):
            self._full_until = time.monotonic() + LIMITED_HOLD
        if rows[-1].held is not None:  # held rows come last (SPEC §23)
            rows = self._held(rows)
        got = await self._buffered(rows, lease_until) if rows else 0
        if limited:  # the rows it left go through the full pick, at once
            self._full_until = time.monotonic() + LIMITED_HOLD
            got += await self._pick(limit - got, full=True)
        return got

    async def _buffered(self, rows: list[Claim], lease_until: float) -> int:
        """Put a pick's claims into the buffer (or hand back those of unknown machines);
        ``lease_until``: the monotonic time their leases surely last."""
        w = self._w
        unknown: list[Claim] = []
        for claim in rows:
            machine = resolve(w.registry, claim.fsm, claim.fsm_version)
            if machine is None:
                unknown.append(claim)
                continue
            if claim.due:  # its token is due later: it starts then (§23)
                self._waiting.push(time.monotonic() + claim.due, claim, machine, lease_until)
                asyncio.get_running_loop().call_later(claim.due, self._token_due)
                continue
            self._buffer.push(claim, machine, lease_until)
        if unknown:
            # Not failed, not lost: another node (with the code) can run it (SPEC §13).
            await w.unknown.hand_back(unknown)
        if telemetry.listening("scheduler.saturation"):
            self._saturation()
        return len(rows)

    def _saturation(self) -> None:
        telemetry.emit(
            "scheduler.saturation",
            {
                "in_flight": len(self.running),
                "buffer": len(self._buffer),
                "concurrency": self.concurrency,
                "prefetch": self._prefetch.size,
            },
            {"queue": self.queue},
        )

    def _held(self, rows: list[Claim]) -> list[Claim]:
        """Report the rows the pick held back for their rate limit; return the claims."""
        claims, soonest = report_held(rows, self.queue, self._w.unknown_limits)
        if soonest is not None:
            at = time.monotonic() + soonest
            self._due = at if self._due is None else min(self._due, at)
        return claims

    async def _contended_row(self, key: str | None) -> tuple[int | None, str | None]:
        """The row the failed pick wanted for ``key`` (the key's most urgent runnable
        one) — looked up only when someone listens, and only on contention."""
        if key is None:
            return None, None
        stmt = self._w.queries.next_for_key(self.queue, key)
        try:
            rows = await self._w.fetch(stmt)
        except Exception:
            return None, None
        return (rows[0].id, rows[0].fsm) if rows else (None, None)

    def _token_due(self) -> None:
        """A waiting claim's timer: start what is due (a timer may fire a hair early:
        then look again when the first one is)."""
        self._start_buffered()
        first = self._waiting.first()
        if first is not None and not self._stopping:
            left = first - time.monotonic()
            if left > 0:
                asyncio.get_running_loop().call_later(left, self._token_due)

    def _start_buffered(self) -> None:
        lapsed: list[Claim] = []
        now = time.monotonic()
        for claim, machine, lease_until in self._waiting.pop_due(now):
            self._buffer.push(claim, machine, lease_until)
        while self._buffer and self._slots.free() and not self._stopping:
            claim, machine, leased = self._buffer.pop(now)
            if not leased:
                lapsed.append(claim)
                continue
            self._slots.start(claim)
            task = asyncio.create_task(
                self._run(claim, machine), name=f"gen_durable.step.{claim.id}"
            )
            self._tasks.add(task)
            self._task_of[claim.id] = task
            task.add_done_callback(self._tasks.discard)
        if lapsed:
            self._hand_back_lapsed(lapsed)

    def _hand_back_lapsed(self, claims: list[Claim]) -> None:
        """Buffered claims whose lease may have run out unextended (the loop stalled —
        a frozen process, a long outage — past a lease) are not started: the reaper
        may have given the row to another worker already. Releasing them is guarded
        by their token, so a row that is still ours goes back to the queue and one
        that is not is left alone."""
        log.warning(
            "queue %s: %d buffered claim(s) outlived their lease unextended; handing them "
            "back instead of starting them",
            self.queue,
            len(claims),
        )
        task = asyncio.create_task(self._release(claims), name="gen_durable.release")
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release(self, claims: list[Claim]) -> int:
        return await self._w.release(claims)

    def _may_keep(self, priority: int) -> bool:
        """Run-ahead may continue a claim unless draining, or unless a buffered row is
        more urgent (it must not wait behind a chain); equal urgency may wait, for at
        most ``run_ahead`` steps."""
        urgent = self._buffer.most_urgent()
        return not self._stopping and (urgent is None or urgent >= priority)

    async def _run(self, claim: Claim, machine: Any) -> None:
        try:
            await self._w.executor.run(claim, machine, self._may_keep, self.queue, self._slots)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Only the commit itself can fail here (the executor guards user code):
            # the outcome is not committed, the lease will expire, the step re-runs.
            log.exception("instance %s: outcome could not be committed", claim.id)
        finally:
            if self._task_of.get(claim.id) is asyncio.current_task():
                del self._task_of[claim.id]
            self._slots.finished(claim)  # starts the next buffered claim in its slot
            self.wake.set()  # and the feeder refills the buffer

    def abandon(self, instance_id: int) -> bool:
        """The row was cancelled (SPEC §21): drop its buffered claim, or cancel the
        task running its step. An ``async`` step stops at its next await; a ``def``
        step's thread runs to its end. Either way the outcome is stale — the claim
        token is gone — and the completer's guard drops it. True when something was
        held."""
        if self._waiting.remove(instance_id) or self._buffer.remove(instance_id):
            return True
        task = self._task_of.get(instance_id)
        if task is None or task.done():
            return False
        task.cancel()
        return True
