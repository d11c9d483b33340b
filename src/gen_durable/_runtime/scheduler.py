"""The per-queue feeder (SPEC §8, §9).

One scheduler serves exactly one queue. It keeps at most ``concurrency`` steps running
and at most ``concurrency + prefetch`` rows claimed (running + buffered), and picks
only when at least ``min_demand`` of those slots are free — unless it is fully idle.
A finished step sets ``wake`` so the next pick happens at once: throughput is bounded
by concurrency and step time, not by the poll interval. An empty pick doubles the idle
wait up to ``max_poll_interval``; any claimed work snaps it back. A LISTEN nudge (an
insert or a wake-up in this queue) also sets ``wake``; polling stays the source of
truth, so a lost notification only costs latency.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import re
import time
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import errors as pg_errors

from .. import telemetry
from ..registry import REGISTRY, resolve
from .executor import Claim

if TYPE_CHECKING:
    from ..machine import Machine
    from .node import Node

log = logging.getLogger("gen_durable")

_KEY_RE = re.compile(r"Key \(partition_key\)=\((.*)\) already exists")
NOT_FOUND_LOG_EVERY = 60.0
"""Seconds between two ERROR lines for one missing (machine, version) on a node."""


class QueueScheduler:
    def __init__(self, node: Node, queue: str, concurrency: int) -> None:
        self.node = node
        self.queue = queue
        self.concurrency = concurrency
        self.wake = asyncio.Event()
        self.running: dict[int, Claim] = {}
        # Heap of (priority, seq, claim, machine): the machine is resolved once, at pick.
        self._buffer: list[tuple[int, int, Claim, type[Machine]]] = []
        self._seq = 0
        self._stopping = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._loop(), name=f"gen_durable.queue.{self.queue}")

    def held(self) -> list[Claim]:
        """Every row this scheduler holds a claim on: running and buffered."""
        return [*self.running.values(), *(entry[2] for entry in self._buffer)]

    async def drain(self, deadline: float) -> None:
        """Stop picking, hand buffered rows back at once, give running steps until
        ``deadline`` (loop time), then hand back every row still running — ``async``
        and ``def`` steps alike — with the attempt counted (SPEC §8)."""
        self._stopping = True
        self.wake.set()
        loop = asyncio.get_running_loop()
        if self._loop_task is not None:
            # A pick stuck on the database must not hold the shutdown hostage.
            done, _ = await asyncio.wait(
                {self._loop_task}, timeout=max(0.0, deadline - loop.time())
            )
            if not done:
                self._loop_task.cancel()
                await asyncio.gather(self._loop_task, return_exceptions=True)
        buffered = [entry[2] for entry in self._buffer]
        self._buffer.clear()
        released = await self.node.release(buffered) if buffered else 0
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
        stragglers = list(self.running.values())
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
        await self.node.release(stragglers, bump=True)

    # -- the feeder ----------------------------------------------------------------

    async def _loop(self) -> None:
        cfg = self.node.config
        delay = cfg.poll_interval
        error_delay = 0.1
        while not self._stopping:
            self._start_buffered()
            held = len(self.running) + len(self._buffer)
            capacity = self.concurrency + cfg.prefetch - held
            idle = held == 0
            if capacity <= 0 or (capacity < cfg.min_demand and not idle):
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
            if await self._wait(delay):
                continue
            delay = min(delay * 2, cfg.max_poll_interval)

    async def _wait(self, timeout: float) -> bool:
        """Wait for a wake-up or ``timeout``; True when woken."""
        if self._stopping:
            return True
        try:
            await asyncio.wait_for(self.wake.wait(), timeout)
            woken = True
        except TimeoutError:
            woken = False
        self.wake.clear()
        return woken

    async def _pick(self, limit: int) -> int:
        node = self.node
        token = node.next_token()
        started = time.perf_counter()
        stmt = node.queries.pick(self.queue, limit, token, node.config.lease_ttl)
        for attempt in range(3):
            try:
                rows = await node.fetch(stmt)
                break
            except pg_errors.UniqueViolation as exc:
                # Two picks raced past the executing-key probe; the unique index on
                # executing keys refused the second (SPEC §9). Nothing was claimed.
                key = _contended_key(exc)
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
        node.stats.add(statements=1, commits=1, picks=1, picked=len(rows))
        if telemetry.listening("pick.stop"):
            telemetry.emit(
                "pick.stop",
                {"count": len(rows), "demand": limit, "duration": time.perf_counter() - started},
                {"queue": self.queue, "node": node.node_id},
            )
        if not rows:
            return 0
        unknown: list[Claim] = []
        for claim in rows:
            machine = resolve(node.registry, claim.fsm, claim.fsm_version)
            if machine is None:
                unknown.append(claim)
                continue
            self._seq += 1
            heapq.heappush(self._buffer, (claim.priority, self._seq, claim, machine))
        if unknown:
            await self._hand_back_unknown(unknown)
        if telemetry.listening("scheduler.saturation"):
            telemetry.emit(
                "scheduler.saturation",
                {
                    "in_flight": len(self.running),
                    "buffer": len(self._buffer),
                    "concurrency": self.concurrency,
                    "prefetch": node.config.prefetch,
                },
                {"queue": self.queue},
            )
        return len(rows)

    async def _contended_row(self, key: str | None) -> tuple[int | None, str | None]:
        """The row the failed pick wanted for ``key`` (the key's most urgent runnable
        one) — looked up only when someone listens, and only on contention."""
        if key is None:
            return None, None
        stmt = self.node.queries.next_for_key(self.queue, key)
        try:
            rows = await self.node.fetch(stmt)
        except Exception:
            return None, None
        return (rows[0].id, rows[0].fsm) if rows else (None, None)

    async def _hand_back_unknown(self, claims: list[Claim]) -> None:
        # Not failed, not lost: another node (with the code) can run it (SPEC §13).
        node = self.node
        delay = node.config.unknown_retry
        groups: dict[tuple[str, int], list[Claim]] = {}
        for c in claims:
            groups.setdefault((c.fsm, c.fsm_version), []).append(c)
        for (fsm, version), group in groups.items():
            # The reason lands in last_error, where `show` and `status` find it; it
            # names the node, so an operator knows which deploy lacks the code.
            reason = (
                f"no machine {fsm!r} v{version} on node {node.node_id} "
                f"(handed back, retried in {delay:g}s)"
            )
            try:
                await node.release(group, delay=delay, reason=reason)
            except Exception:
                log.exception("handing back %d unknown-machine rows failed", len(group))
            # Every offer of such a row comes back here (every `delay` seconds, on
            # every node without the code): one line per machine a minute, not a flood.
            held = node.not_found_log.allow((fsm, version), len(group))
            if held is not None:
                log.error(
                    "%s: %d instance(s)%s%s",
                    reason,
                    len(group),
                    _versions_here(node, fsm),
                    f"; {held} more handed back since the last report" if held else "",
                )
            if telemetry.listening("registry.not_found"):
                telemetry.emit(
                    "registry.not_found",
                    {"count": len(group)},
                    {"fsm": fsm, "fsm_version": version},
                )

    def _start_buffered(self) -> None:
        while self._buffer and len(self.running) < self.concurrency and not self._stopping:
            _, _, claim, machine = heapq.heappop(self._buffer)
            self.running[claim.id] = claim
            task = asyncio.create_task(
                self._run(claim, machine), name=f"gen_durable.step.{claim.id}"
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _may_keep(self, priority: int) -> bool:
        """Run-ahead may continue a claim unless draining, or unless a buffered row is
        more urgent (it must not wait behind a chain); equal urgency may wait, for at
        most ``run_ahead`` steps."""
        return not self._stopping and (not self._buffer or self._buffer[0][0] >= priority)

    async def _run(self, claim: Claim, machine: Any) -> None:
        try:
            await self.node.executor.run(claim, machine, self._may_keep)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Only the commit itself can fail here (the executor guards user code):
            # the outcome is not committed, the lease will expire, the step re-runs.
            log.exception("instance %s: outcome could not be committed", claim.id)
        finally:
            if self.running.get(claim.id) is claim:
                del self.running[claim.id]
            self.wake.set()


class EveryInterval:
    """Lets a key through at most once per ``interval`` seconds, counting what it held back.

    ``allow(key, n)`` returns None to stay quiet, else how many were held back since
    the key last got through (0 the first time)."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self._clock = clock
        self._next: dict[Hashable, float] = {}
        self._held: dict[Hashable, int] = {}

    def allow(self, key: Hashable, n: int = 1) -> int | None:
        now = self._clock()
        due = self._next.get(key)
        if due is not None and now < due:
            self._held[key] = self._held.get(key, 0) + n
            return None
        self._next[key] = now + self.interval
        return self._held.pop(key, 0)


def _versions_here(node: Node, fsm: str) -> str:
    """`` (this node has v1, v3)`` when other versions of the machine are registered:
    the usual deploy mistake is a version bump that reached only some nodes."""
    versions = sorted(
        {m.__gd_version__ for m in (*node.registry, *REGISTRY) if m.__gd_name__ == fsm}
    )
    return f" (this node has {', '.join(f'v{v}' for v in versions)})" if versions else ""


def _contended_key(exc: BaseException) -> str | None:
    diag = getattr(exc, "diag", None)
    detail = getattr(diag, "message_detail", None) or ""
    m = _KEY_RE.search(detail)
    return m.group(1) if m else None
